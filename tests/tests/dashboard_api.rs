//! The dashboard's API through real HTTPS against real simulated devices: server-side search,
//! filters and sorting of the device list with the latest CPU and memory; the tenant summary;
//! device details with what the caller may do; telemetry history from the stream, downsampled,
//! with security events marked; and the live Server-Sent Events stream, which carries only the
//! devices the caller may read and is bounded per user. Scopes hold throughout: what a caller
//! may not read is not found.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    time::{Duration, Instant},
};
use wegweiser_cp::{
    rbac::{Binding, Role, Scope},
    users::AuthConfig,
};
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions, sim::SimDevice};

async fn token_for(p: &Platform, user: &str, role: Role, scope: Scope) -> String {
    wegweiser_tests::user_token(p, user, vec![Binding { role, scope }]).await
}

async fn get(p: &Platform, token: &str, path: &str) -> HttpResponse {
    let auth = format!("Bearer {token}");
    p.request("GET", path, &[("authorization", auth.as_str())], None)
        .await
        .unwrap()
}

/// Sends a report of `kind` (`met`, `evt`) as the device.
async fn report(d: &SimDevice, kind: &str, seq: u64, body: serde_json::Value) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        "Nats-Msg-Id",
        wegweiser_shared::telemetry::message_id(&d.id, 2_000_000_000 + seq).as_str(),
    );
    d.conn
        .client
        .request_with_headers(
            format!("wg.{}.up.{}.tel.{kind}", d.account, d.id),
            h,
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
}

fn metrics(seq: u64, cpu: f32, used: u64, available: u64) -> serde_json::Value {
    serde_json::json!({
        "v": 1, "seq": seq, "ts": wegweiser_shared::time::now(), "cpu": cpu,
        "memory_used": used, "memory_available": available, "process_count": 3,
        "top_cpu": [], "top_memory": [], "uptime": 60,
        "disks": [{"mount": "/", "used": 40, "free": 60}],
        "network": [{"name": "eth0", "rx_bps": 1000, "tx_bps": 500}]
    })
}

fn ids(r: &HttpResponse) -> Vec<String> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {} {}", r.status, r.body))
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_api_searches_sorts_summarises_and_streams_within_scope() {
    let p = Platform::start_with(PlatformOptions {
        auth: Some(AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let acme = p.tenant("acme").await.unwrap().id;
    let other = p.tenant("other").await.unwrap().id;
    let _tasks = p.serve().await.unwrap();
    let web = SimDevice::enroll_in(&p, &acme, "o1", "g1", "web-01")
        .await
        .unwrap();
    let db = SimDevice::enroll_in(&p, &acme, "o1", "g2", "db-02")
        .await
        .unwrap();
    let foreign = SimDevice::enroll_in(&p, &other, "o1", "g1", "web-09")
        .await
        .unwrap();
    let op = token_for(&p, "op", Role::Admin, Scope::Global).await;
    let tech = token_for(
        &p,
        "tech",
        Role::Technician,
        Scope::Tenant {
            tenant: acme.clone(),
        },
    )
    .await;
    let viewer = token_for(
        &p,
        "viewer",
        Role::Viewer,
        Scope::Group {
            tenant: acme.clone(),
            organization: "o1".into(),
            group: "g1".into(),
        },
    )
    .await;

    // Presence, metrics and events.
    for d in [&web, &db, &foreign] {
        d.heartbeat(1).await.unwrap();
    }
    report(&web, "met", 1, metrics(1, 80.0, 3, 1)).await;
    report(&db, "met", 1, metrics(1, 10.0, 1, 3)).await;
    report(
        &web,
        "evt",
        2,
        serde_json::json!({"v": 1, "seq": 2, "ts": 1, "event": "trust_rejected", "reason": "bad_signature", "detail": "keyset"}),
    )
    .await;
    report(
        &db,
        "evt",
        2,
        serde_json::json!({"v": 1, "seq": 2, "ts": 1, "event": "command_rejected", "reason": "expired", "detail": "too old"}),
    )
    .await;
    report(
        &db,
        "evt",
        3,
        serde_json::json!({"v": 1, "seq": 3, "ts": 1, "event": "agent_start", "agent_version": "sim"}),
    )
    .await;

    let devices = format!("/v1/tenants/{acme}/devices");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(&p, &op, &format!("{devices}?sort=cpu&order=desc")).await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        if items.len() == 2
            && items
                .iter()
                .all(|d| d["cpu"].is_number() && d["online"] == true)
        {
            // The latest CPU and memory come with the list, sorted on the server.
            assert_eq!(ids(&r), [web.id.to_string(), db.id.to_string()]);
            assert_eq!(items[0]["cpu"], 80.0);
            assert_eq!(items[0]["mem"], 75.0);
            assert_eq!(items[1]["mem"], 25.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached the list: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sorting, searching, filtering and paging, on the server.
    let page = |q: &str| format!("{devices}?{q}");
    let r = get(&p, &op, &page("sort=cpu")).await;
    assert_eq!(ids(&r), [db.id.to_string(), web.id.to_string()]);
    let r = get(&p, &op, &page("sort=hostname&order=desc")).await;
    assert_eq!(ids(&r), [web.id.to_string(), db.id.to_string()]);
    let r = get(&p, &op, &page("q=WEB")).await;
    assert_eq!(ids(&r), [web.id.to_string()]);
    let r = get(&p, &op, &page(&format!("q={}", &db.id.as_str()[..10]))).await;
    assert_eq!(ids(&r), [db.id.to_string()]);
    assert_eq!(ids(&get(&p, &op, &page("os=linux")).await).len(), 2);
    assert!(ids(&get(&p, &op, &page("os=windows")).await).is_empty());
    assert!(ids(&get(&p, &op, &page("online=false")).await).is_empty());
    let first = get(&p, &op, &page("sort=mem&order=desc&limit=1")).await;
    assert_eq!(ids(&first), [web.id.to_string()]);
    assert_eq!(first.body["next"], web.id.as_str());
    let second = get(
        &p,
        &op,
        &page(&format!("sort=mem&order=desc&limit=1&after={}", web.id)),
    )
    .await;
    assert_eq!(ids(&second), [db.id.to_string()]);
    assert!(second.body.get("next").is_none(), "{}", second.body);
    for bad in ["sort=colour", "order=up"] {
        let r = get(&p, &op, &page(bad)).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "bad_request"),
            "{bad}: {}",
            r.body
        );
    }
    // A group Viewer lists its group only, sorted or not.
    assert_eq!(ids(&get(&p, &viewer, &devices).await), [web.id.to_string()]);
    assert_eq!(
        ids(&get(&p, &viewer, &page("sort=cpu")).await),
        [web.id.to_string()]
    );

    // Details and what the caller may do.
    let detail = |d: &SimDevice| format!("/v1/tenants/{acme}/devices/{}/detail", d.id);
    let r = get(&p, &tech, &detail(&web)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["can"], serde_json::json!(["read", "command"]));
    assert_eq!(r.body["device"]["cpu"], 80.0);
    assert_eq!(r.body["metrics"]["process_count"], 3);
    let r = get(&p, &viewer, &detail(&web)).await;
    assert_eq!(r.body["can"], serde_json::json!(["read"]));
    assert_eq!(get(&p, &viewer, &detail(&db)).await.status, 404);
    let r = get(
        &p,
        &op,
        &format!("/v1/tenants/{acme}/devices/{}/detail", foreign.id),
    )
    .await;
    assert_eq!(r.status, 404, "another tenant's device is not found");

    // History from the stream; security events marked.
    let history =
        |d: &SimDevice, q: &str| format!("/v1/tenants/{acme}/devices/{}/history?{q}", d.id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let r = get(&p, &op, &history(&web, "kind=metrics&range=1h")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break r.body;
        }
        assert!(Instant::now() < deadline, "no history: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(h["step"], 10);
    let points = h["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{h}");
    assert_eq!(points[0]["cpu"], 80.0);
    assert_eq!(points[0]["disk"], 40.0);
    assert_eq!(
        (points[0]["rx"].as_u64(), points[0]["tx"].as_u64()),
        (Some(1000), Some(500))
    );
    assert_eq!(h["events"][0]["event"], "trust_rejected");
    assert_eq!(h["events"][0]["security"], true);
    let r = get(&p, &op, &history(&db, "range=24h")).await;
    assert_eq!(r.body["step"], 240);
    let events: Vec<(&str, bool)> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["security"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(events, [("agent_start", false), ("command_rejected", true)]);
    for bad in ["range=7d", "kind=processes"] {
        let r = get(&p, &op, &history(&web, bad)).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{bad}");
    }
    assert_eq!(
        get(&p, &viewer, &history(&db, "range=1h")).await.status,
        404
    );

    // The tenant summary counts what the caller may read.
    let summary = format!("/v1/tenants/{acme}/summary");
    let s = get(&p, &op, &summary).await.body;
    assert_eq!(
        (
            &s["devices"],
            &s["online"],
            &s["offline"],
            &s["enrolled_24h"]
        ),
        (&2.into(), &2.into(), &0.into(), &2.into()),
        "{s}"
    );
    assert_eq!(s["os"], serde_json::json!([{"os": "linux", "count": 2}]));
    assert_eq!(s["alerts"].as_array().unwrap().len(), 2, "{s}");
    let s = get(&p, &viewer, &summary).await.body;
    assert_eq!(s["devices"], 1);
    let alerts = s["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{s}");
    assert_eq!(alerts[0]["device"], web.id.as_str());
    assert_eq!(
        s["can"],
        serde_json::json!([]),
        "a group Viewer has no tenant-wide rights"
    );
    assert_eq!(
        get(&p, &viewer, &format!("/v1/tenants/{other}/summary"))
            .await
            .status,
        404
    );

    // The live stream: the group Viewer hears its own device, never the other group's.
    let url = format!("{}/v1/tenants/{acme}/live", p.https_url());
    let agent = p.https();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (u, a, t) = (url.clone(), agent.clone(), viewer.clone());
    let reader = std::thread::spawn(move || {
        let r = a
            .get(&u)
            .header("authorization", format!("Bearer {t}"))
            .header("accept", "text/event-stream")
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert_eq!(r.headers()["cache-control"], "no-store");
        // The harness's client gives up after 10 s: that ends the reading.
        for line in BufReader::new(r.into_body().into_reader()).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seq = 10;
    while Instant::now() < deadline {
        seq += 1;
        db.heartbeat(seq).await.unwrap();
        report(&db, "met", seq, metrics(seq, 55.0, 1, 1)).await;
        web.heartbeat(seq).await.unwrap();
        report(&web, "met", seq, metrics(seq, 33.0, 1, 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        lines.extend(rx.try_iter());
        if lines.iter().filter(|l| l.contains("\"cpu\":33.0")).count() >= 2 {
            break;
        }
    }
    let data: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    assert!(
        data.iter()
            .any(|e| e["device"] == web.id.as_str() && e["cpu"] == 33.0 && e["online"] == true),
        "no live event of the Viewer's device: {lines:?}"
    );
    assert!(
        data.iter().all(|e| e["device"] == web.id.as_str()),
        "the stream leaked another group's device: {lines:?}"
    );
    assert!(lines.iter().any(|l| l == "event: device"), "{lines:?}");
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;

    // Another tenant's stream is not found, nor one of a tenant that does not exist (even for
    // the platform operator); a client that does not ask for events gets 406 at once; a user
    // holds at most 4 streams.
    assert_eq!(
        get(&p, &op, "/v1/tenants/nosuchtenant/live").await.status,
        404
    );
    let r = get(&p, &op, &format!("/v1/tenants/{acme}/live")).await;
    assert_eq!((r.status, r.code()), (406, "not_acceptable"));
    assert_eq!(
        get(&p, &viewer, &format!("/v1/tenants/{other}/live"))
            .await
            .status,
        404
    );
    let bounded = tokio::task::spawn_blocking(move || {
        let open = || {
            agent
                .get(&url)
                .header("authorization", format!("Bearer {op}"))
                .header("accept", "text/event-stream")
                .call()
                .unwrap()
        };
        let held: Vec<_> = (0..4).map(|_| open()).collect();
        assert!(held.iter().all(|r| r.status() == 200));
        let fifth = open();
        let refused = (
            fifth.status().as_u16(),
            fifth.headers().get("retry-after").is_some(),
        );
        drop(held);
        // Closed streams give their slots back.
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            let r = open();
            if r.status() == 200 || Instant::now() > deadline {
                break r.status().as_u16();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        (refused, again)
    })
    .await
    .unwrap();
    assert_eq!(bounded, ((429, true), 200));
}
