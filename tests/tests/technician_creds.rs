//! Technician NATS credentials through the real HTTPS API and a real nats-server: a
//! group-scoped Technician and a tenant-scoped Viewer each get a creds file, connect with
//! async-nats, and receive the heartbeats and reports of exactly the devices they may read;
//! nothing from other devices or another tenant arrives, whatever they subscribe to; publishing a
//! command is a permissions violation; expired credentials are refused; bad requests get 400 and
//! other tenants 404.
#![allow(clippy::unwrap_used)]

use async_nats::{ConnectOptions, Event};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc::UnboundedReceiver;
use wegweiser_cp::{
    audit::AuditQuery,
    rbac::{Binding, Role, Scope},
    users::AuthConfig,
};
use wegweiser_shared::{
    command::{CommandResult, Outcome},
    ids::TenantId,
    time::now,
};
use wegweiser_tests::user_token as token_for;
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions, collect, sim::SimDevice};

async fn call(p: &Platform, token: &str, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let body = (!body.is_empty()).then(|| body.to_vec());
    p.request(method, path, &[("authorization", auth.as_str())], body)
        .await
        .unwrap()
}

async fn creds(p: &Platform, token: &str, tenant: &TenantId, body: &str) -> HttpResponse {
    let path = format!("/v1/tenants/{tenant}/nats-credentials");
    call(p, token, "POST", &path, body.as_bytes()).await
}

/// The server errors a connection reported.
#[derive(Debug, Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    fn all(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Connects with the creds file text as a third-party dashboard would.
async fn connect(
    p: &Platform,
    creds: &str,
) -> Result<(async_nats::Client, Errors), async_nats::ConnectError> {
    let events = Errors::default();
    let ev = events.clone();
    let client = ConnectOptions::with_credentials(creds)
        .unwrap()
        .add_root_certificates(p.ca.clone())
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |e| {
            let ev = ev.clone();
            async move {
                if let Event::ServerError(e) = e
                    && let Ok(mut v) = ev.0.lock()
                {
                    v.push(e.to_string());
                }
            }
        })
        .connect(&p.url)
        .await?;
    Ok((client, events))
}

/// Waits until the API lists `n` devices for `token` in `tenant`.
async fn wait_listed(p: &Platform, token: &str, tenant: &TenantId, n: usize) {
    let path = format!("/v1/tenants/{tenant}/devices");
    for _ in 0..200 {
        let r = call(p, token, "GET", &path, b"").await;
        if r.body["items"].as_array().map_or(0, Vec::len) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the API never listed {n} devices of {tenant}");
}

/// Every message a receiver holds after a short settling time: `(device token, kind token)`.
async fn received(rx: &mut UnboundedReceiver<async_nats::Message>) -> BTreeSet<(String, String)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = BTreeSet::new();
    while let Ok(m) = rx.try_recv() {
        let parts: Vec<&str> = m.subject.split('.').collect();
        out.insert((parts[3].to_owned(), parts[4..].join(".")));
    }
    out
}

async fn report(d: &SimDevice, seq: u64) {
    d.heartbeat(seq).await.unwrap();
    d.send_result(&CommandResult {
        v: 1,
        seq,
        ts: now(),
        id: format!("r{seq}"),
        kind: "ping".into(),
        outcome: Outcome::Ok,
        output: serde_json::json!({}),
        error: None,
        duration_us: 1,
    })
    .await
    .unwrap();
}

fn violations(events: &Errors, what: &str) -> usize {
    events
        .all()
        .iter()
        .filter(|e| e.contains(&format!("Permissions Violation for {what}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_credentials_see_exactly_their_devices_and_cannot_publish() {
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
    let acme = p.tenant("acme").await.unwrap();
    let other = p.tenant("other").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let in1 = SimDevice::enroll_in(&p, &acme.id, "o1", "g1", "m1")
        .await
        .unwrap();
    let in2 = SimDevice::enroll_in(&p, &acme.id, "o1", "g1", "m2")
        .await
        .unwrap();
    let out = SimDevice::enroll_in(&p, &acme.id, "o1", "g2", "m3")
        .await
        .unwrap();
    let foreign = SimDevice::enroll_in(&p, &other.id, "o1", "g1", "m4")
        .await
        .unwrap();

    let tech = token_for(
        &p,
        "tech",
        vec![Binding {
            role: Role::Technician,
            scope: Scope::Group {
                tenant: acme.id.clone(),
                organization: "o1".into(),
                group: "g1".into(),
            },
        }],
    )
    .await;
    let viewer = token_for(
        &p,
        "viewer",
        vec![Binding {
            role: Role::Viewer,
            scope: Scope::Tenant {
                tenant: acme.id.clone(),
            },
        }],
    )
    .await;
    wait_listed(&p, &tech, &acme.id, 2).await;
    wait_listed(&p, &viewer, &acme.id, 3).await;

    // Issue: the group technician gets its two devices, the tenant viewer every device.
    let t = creds(&p, &tech, &acme.id, r#"{"ttl_secs": 600}"#).await;
    assert_eq!(t.status, 200, "{:?}", t.body);
    assert_eq!(t.body["scope"], serde_json::json!({"devices": 2}));
    let exp = t.body["expires_at"].as_i64().unwrap();
    assert!((now() + 590..=now() + 600).contains(&exp), "{exp}");
    assert!(!t.body["nats_urls"].as_array().unwrap().is_empty());
    let v = creds(&p, &viewer, &acme.id, "").await;
    assert_eq!(v.status, 200, "{:?}", v.body);
    assert_eq!(v.body["scope"], "all");
    let v_exp = v.body["expires_at"].as_i64().unwrap();
    assert!(
        (now() + 890..=now() + 900).contains(&v_exp),
        "default 900 s"
    );
    // Short-lived credentials, checked for expiry at the end.
    let short = creds(&p, &viewer, &acme.id, r#"{"ttl_secs": 10}"#).await;
    assert_eq!(short.status, 200, "{:?}", short.body);
    let short_exp = short.body["expires_at"].as_i64().unwrap();
    let short_creds = short.body["creds"].as_str().unwrap().to_owned();
    assert!(
        connect(&p, &short_creds).await.is_ok(),
        "valid until expiry"
    );

    // The issuance is audited, without the seed.
    let page = p
        .auth
        .audit_query(&AuditQuery::tenant(acme.id.clone()))
        .await
        .unwrap();
    let issued: Vec<_> = page
        .entries
        .iter()
        .filter(|e| e.kind == "technician_creds.issue")
        .collect();
    assert_eq!(issued.len(), 3, "{:?}", page.entries);
    assert_eq!(issued[0].actor, "tech");
    assert_eq!(issued[0].detail["user"], t.body["user"]);
    let seed_line = t.body["creds"]
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("SU"))
        .unwrap()
        .to_owned();
    assert!(
        !serde_json::to_string(&page.entries)
            .unwrap()
            .contains(&seed_line)
    );

    // Connect both with the creds text.
    let (tc, t_events) = connect(&p, t.body["creds"].as_str().unwrap())
        .await
        .unwrap();
    let (vc, v_events) = connect(&p, v.body["creds"].as_str().unwrap())
        .await
        .unwrap();
    let up = |acc: &str, rest: &str| format!("wg.{acc}.up.{rest}");
    let (a, o) = (acme.account.as_str(), other.account.as_str());
    let mut t_ok = Vec::new();
    for d in [&in1, &in2] {
        t_ok.push(collect(
            tc.subscribe(up(a, &format!("{}.>", d.id))).await.unwrap(),
        ));
    }
    let mut t_denied = Vec::new();
    for s in [
        ">".to_owned(),
        "wg.>".to_owned(),
        "wg.*.up.>".to_owned(),
        up(a, ">"),
        up(a, "*.tel.>"),
        up(a, &format!("{}.>", out.id)),
        up(o, ">"),
        up(o, &format!("{}.>", foreign.id)),
        format!("wg.{a}.down.>"),
        format!("wg.{a}.down.{}.>", in1.id),
        "_INBOX.>".to_owned(),
    ] {
        t_denied.push((s.clone(), collect(tc.subscribe(s).await.unwrap())));
    }
    let mut v_all = collect(vc.subscribe(up(a, "*.tel.>")).await.unwrap());
    let mut v_denied = Vec::new();
    for s in [
        ">".to_owned(),
        "wg.*.up.>".to_owned(),
        up(o, ">"),
        up(o, "*.tel.>"),
    ] {
        v_denied.push((s.clone(), collect(vc.subscribe(s).await.unwrap())));
    }
    tc.flush().await.unwrap();
    vc.flush().await.unwrap();
    let allowed: Vec<String> = [&in1, &in2]
        .iter()
        .map(|d| up(a, &format!("{}.>", d.id)))
        .chain([up(a, "*.tel.>")])
        .collect();
    p.wait_subscribed(&acme.account, &allowed).await.unwrap();

    // A command published by the technician is denied and never reaches the device.
    let mut cmds = collect(
        in1.conn
            .client
            .subscribe(in1.command_subject())
            .await
            .unwrap(),
    );
    in1.conn.client.flush().await.unwrap();
    p.wait_subscribed(&acme.account, &[in1.command_subject()])
        .await
        .unwrap();
    tc.publish(in1.command_subject(), "forged".into())
        .await
        .unwrap();
    tc.flush().await.unwrap();

    // Every device reports.
    for (i, d) in [&in1, &in2, &out, &foreign].into_iter().enumerate() {
        report(d, i as u64 + 1).await;
    }

    let kinds = |d: &SimDevice| {
        [
            (d.id.to_string(), "tel.hb".to_owned()),
            (d.id.to_string(), "tel.res".to_owned()),
        ]
    };
    for (d, rx) in [&in1, &in2].into_iter().zip(t_ok.iter_mut()) {
        assert_eq!(
            received(rx).await,
            kinds(d).into_iter().collect(),
            "the technician sees {}",
            d.id
        );
    }
    let want_v: BTreeSet<_> = [&in1, &in2, &out].into_iter().flat_map(kinds).collect();
    assert_eq!(received(&mut v_all).await, want_v, "the viewer sees acme");
    for (s, mut rx) in t_denied.into_iter().chain(v_denied) {
        assert!(received(&mut rx).await.is_empty(), "nothing arrives on {s}");
    }
    assert!(
        received(&mut cmds).await.is_empty(),
        "the forged command never arrived"
    );
    assert_eq!(violations(&t_events, "Publish"), 1, "{:?}", t_events.all());
    assert_eq!(
        violations(&t_events, "Subscription"),
        11,
        "every out-of-scope subscription is refused: {:?}",
        t_events.all()
    );
    assert_eq!(
        violations(&v_events, "Subscription"),
        4,
        "{:?}",
        v_events.all()
    );

    // Bad requests and other tenants.
    for body in [
        "{",
        r#"{"ttl_secs": 3601}"#,
        r#"{"ttl_secs": 5}"#,
        r#"{"ttl_secs": "long"}"#,
        r#"{"devices": ["x"]}"#,
        "[]",
    ] {
        let r = creds(&p, &tech, &acme.id, body).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{body}");
        assert!(!r.body["message"].as_str().unwrap().is_empty());
    }
    let huge = format!(r#"{{"ttl_secs": 600, "pad": "{}"}}"#, "x".repeat(70_000));
    let r = creds(&p, &tech, &acme.id, &huge).await;
    assert_eq!((r.status, r.code()), (413, "too_large"));
    for (token, tenant) in [
        (&tech, other.id.as_str()),
        (&viewer, other.id.as_str()),
        (&tech, "nope"),
        (&tech, "BAD!"),
    ] {
        let path = format!("/v1/tenants/{tenant}/nats-credentials");
        let r = call(&p, token, "POST", &path, b"{}").await;
        assert_eq!((r.status, r.code()), (404, "not_found"), "{tenant}");
    }

    // `wegweiser creds` computes the same scope and writes a private file.
    let file = p.dir.path().join("tech.creds");
    let args = |out: Option<std::path::PathBuf>| wegweiser_cp::api_creds::CredsArgs {
        tenant: acme.id.clone(),
        user: "tech".parse().unwrap(),
        ttl: 600,
        out,
    };
    wegweiser_cp::api_creds::cli(&p.data_dir(), args(Some(file.clone())), true)
        .await
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    let parsed = wegweiser_shared::creds::Creds::parse(&text).unwrap();
    let claims: wegweiser_shared::jwt::Claims<wegweiser_shared::jwt::UserNats> =
        wegweiser_shared::jwt::decode_untimed(&parsed.jwt).unwrap();
    let tags: BTreeSet<String> = claims.nats.tags.into_iter().collect();
    let want: BTreeSet<String> = [&in1, &in2]
        .iter()
        .map(|d| format!("device:{}", d.id))
        .collect();
    assert_eq!(tags, want);
    assert_eq!(claims.name, "tech");
    assert!(connect(&p, &text).await.is_ok());
    let again = wegweiser_cp::api_creds::cli(&p.data_dir(), args(Some(file)), true).await;
    assert!(again.unwrap_err().to_string().contains("exists"));
    let mut nobody = args(None);
    nobody.tenant = other.id.clone();
    let e = wegweiser_cp::api_creds::cli(&p.data_dir(), nobody, true).await;
    assert!(e.unwrap_err().to_string().contains("no binding"));

    // Expired credentials are refused.
    let wait = (short_exp + 2 - now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    match connect(&p, &short_creds).await {
        Ok(_) => panic!("expired credentials were accepted"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
            ),
            "{e}"
        ),
    }
}
