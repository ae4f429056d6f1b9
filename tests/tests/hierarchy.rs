//! The tenant hierarchy through the real HTTPS API: organizations and groups created, renamed,
//! moved and deleted; deletions refused while something is inside, then cascaded; a deleted
//! device dropped at once, unable to reconnect, renew or come back with its old key, its reports
//! gone; bad ids and names refused with clear errors; labels already in use migrated to objects
//! when the service starts.
#![allow(clippy::unwrap_used)]

use async_nats::{Event, HeaderMap, jetstream};
use std::{sync::Arc, time::Duration};
use wegweiser_cp::{
    audit::AuditQuery,
    enrollment::TokenRecord,
    ingest::TELEMETRY_STREAM,
    rbac::{Binding, Role, Scope},
    users::AuthConfig,
};
use wegweiser_shared::{
    enroll::{EnrollResponse, RenewRequest},
    ids::{DeviceId, TenantId},
    subject::{self, Token},
    telemetry::{Kind, TELEMETRY_TOKEN, message_id},
};
use wegweiser_tests::user_token as token_for;
use wegweiser_tests::{HttpResponse, Platform, PlatformOptions, UserConn};

async fn start() -> Platform {
    Platform::start_with(PlatformOptions {
        auth: Some(AuthConfig {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..AuthConfig::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn at(role: Role, tenant: &TenantId) -> Vec<Binding> {
    vec![Binding {
        role,
        scope: Scope::Tenant {
            tenant: tenant.clone(),
        },
    }]
}

async fn call(
    p: &Platform,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    let auth = format!("Bearer {token}");
    p.request(
        method,
        path,
        &[("authorization", auth.as_str())],
        body.map(|b| b.as_bytes().to_vec()),
    )
    .await
    .unwrap()
}

fn ids(r: &HttpResponse) -> Vec<String> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {r:?}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// An enrollment token made through the API.
async fn api_token(p: &Platform, admin: &str, tenant: &TenantId, body: &str) -> String {
    let r = call(
        p,
        admin,
        "POST",
        &format!("/v1/tenants/{tenant}/tokens"),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    r.body["token"].as_str().unwrap().to_owned()
}

/// A device enrolled over HTTPS, with its key kept, connected.
struct Dev {
    id: DeviceId,
    account: String,
    kp: Arc<nkeys::KeyPair>,
    conn: UserConn,
}

async fn enroll(p: &Platform, token: &str, machine: &str) -> Dev {
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let (s, v) = p
        .post_enroll(wegweiser_tests::enroll_body(
            token,
            &kp,
            &wegweiser_tests::facts(machine),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let r: EnrollResponse = serde_json::from_value(v).unwrap();
    let conn = p
        .connect_user(r.jwt, kp.clone(), r.device_id.as_str())
        .await
        .unwrap();
    Dev {
        id: r.device_id,
        account: r.account.to_string(),
        kp,
        conn,
    }
}

/// Sends a heartbeat as the agent does; returns once the stream acknowledged it.
async fn heartbeat(d: &Dev, seq: u64) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", message_id(&d.id, seq).as_str());
    let subject = subject::up(
        &d.account.parse().unwrap(),
        &d.id,
        &[
            Token::from_static(TELEMETRY_TOKEN),
            Token::from_static(Kind::Heartbeat.token()),
        ],
    );
    let hb = serde_json::json!({"v": 1, "seq": seq, "ts": wegweiser_shared::time::now(),
        "agent_version": "test", "jwt_expires_at": 0, "spool_depth": 0});
    let ack = d
        .conn
        .client
        .request_with_headers(subject, h, serde_json::to_vec(&hb).unwrap().into())
        .await
        .unwrap();
    let ack: serde_json::Value = serde_json::from_slice(&ack.payload).unwrap();
    assert_eq!(ack["stream"], TELEMETRY_STREAM, "{ack}");
}

/// How many reports of `device` the history holds.
async fn history(p: &Platform, account: &str, device: &DeviceId) -> usize {
    let js = jetstream::new(p.auth.cp_client().clone());
    let stream = js.get_stream(TELEMETRY_STREAM).await.unwrap();
    let filter = format!("wg.{account}.up.{device}.{TELEMETRY_TOKEN}.>");
    let (mut n, mut from) = (0, 1);
    loop {
        match stream
            .get_first_raw_message_by_subject(filter.as_str(), from)
            .await
        {
            Ok(m) => {
                n += 1;
                from = m.sequence + 1;
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return n;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits until `f` holds (the device index and the ingest follow the store).
async fn eventually<F: AsyncFn() -> bool>(what: &str, f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

async fn audit_kinds(p: &Platform, tenant: &TenantId) -> Vec<String> {
    let page = p
        .auth
        .audit_query(&AuditQuery {
            limit: AuditQuery::MAX_LIMIT,
            ..AuditQuery::tenant(tenant.clone())
        })
        .await
        .unwrap();
    page.entries.into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_and_groups_are_created_renamed_moved_and_deleted() {
    let p = start().await;
    let t = p.tenant("acme").await.unwrap().id;
    let _tasks = p.serve().await.unwrap();
    let admin = token_for(&p, "admin", at(Role::Admin, &t)).await;
    let base = format!("/v1/tenants/{t}");

    // Create, and a taken id is a conflict.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations"),
        Some(r#"{"id":"client-a","name":"Client A"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "Client A");
    assert_eq!(r.body["created_by"], "admin");
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations"),
        Some(r#"{"id":"client-a"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{r:?}"
    );
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations"),
        Some(r#"{"id":"client-b"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "client-b", "the name defaults to the id");
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations/client-a/groups"),
        Some(r#"{"id":"office","name":"Office"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["organization"], "client-a");
    // Group ids are unique in the tenant.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations/client-b/groups"),
        Some(r#"{"id":"office"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    // A group in an organization that does not exist.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations/nowhere/groups"),
        Some(r#"{"id":"g"}"#),
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");

    // Pages.
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("{base}/organizations?limit=1"),
        None,
    )
    .await;
    assert_eq!(ids(&r), ["client-a"]);
    assert_eq!(r.body["next"], "client-a");
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("{base}/organizations?limit=1&after=client-a"),
        None,
    )
    .await;
    assert_eq!(ids(&r), ["client-b"]);
    assert!(r.body.get("next").is_none(), "{r:?}");

    // Rename: the name changes, the id stays.
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{base}/organizations/client-a"),
        Some(r#"{"name":"Client A GmbH"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body["id"].as_str()),
        (200, Some("client-a")),
        "{r:?}"
    );
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("{base}/organizations/client-a"),
        None,
    )
    .await;
    assert_eq!(r.body["name"], "Client A GmbH");
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{base}/groups/office"),
        Some(r#"{"name":"Front office"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (200, Some("Front office")),
        "{r:?}"
    );

    // Tokens must name existing objects.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/tokens"),
        Some(r#"{"organization":"nope"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("create it first"),
        "{r:?}"
    );
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/tokens"),
        Some(r#"{"organization":"client-b","group":"office"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "a group of another organization: {r:?}");
    let tok = api_token(
        &p,
        &admin,
        &t,
        r#"{"organization":"client-a","group":"office","max_uses":5}"#,
    )
    .await;
    let d = enroll(&p, &tok, "m-1").await;
    let (rec, _) = p.auth.device_entry(&t, &d.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.organization.as_deref(), rec.group.as_deref()),
        (Some("client-a"), Some("office"))
    );

    // A role binding on the group blocks its move, and the answer names it.
    let _bound = token_for(
        &p,
        "office-tech",
        vec![Binding {
            role: Role::Technician,
            scope: Scope::Group {
                tenant: t.clone(),
                organization: "client-a".into(),
                group: "office".into(),
            },
        }],
    )
    .await;
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{base}/groups/office"),
        Some(r#"{"organization":"client-b"}"#),
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["message"].as_str().unwrap().contains("office-tech"),
        "{r:?}"
    );
    let (still, _) = p.auth.device_entry(&t, &d.id).await.unwrap().unwrap();
    assert_eq!(
        still.organization.as_deref(),
        Some("client-a"),
        "nothing moved"
    );
    p.auth
        .delete_user(&"office-tech".parse().unwrap(), "test")
        .await
        .unwrap();
    // Moving to an organization that does not exist.
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{base}/groups/office"),
        Some(r#"{"organization":"nope"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("create it first"),
        "{r:?}"
    );
    // The move: the group, its device and its token go along.
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{base}/groups/office"),
        Some(r#"{"organization":"client-b"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body["organization"].as_str()),
        (200, Some("client-b")),
        "{r:?}"
    );
    let (moved, _) = p.auth.device_entry(&t, &d.id).await.unwrap().unwrap();
    assert_eq!(
        (moved.organization.as_deref(), moved.group.as_deref()),
        (Some("client-b"), Some("office"))
    );
    let tokens: Vec<TokenRecord> = p
        .auth
        .tokens(&t)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(tokens[0].organization.as_deref(), Some("client-b"));
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("{base}/organizations/client-b/groups"),
        None,
    )
    .await;
    assert_eq!(ids(&r), ["office"]);
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("{base}/organizations/client-a/groups"),
        None,
    )
    .await;
    assert!(ids(&r).is_empty(), "{r:?}");
    // The device list follows.
    eventually("the index sees the move", async || {
        let r = call(
            &p,
            &admin,
            "GET",
            &format!("{base}/devices?organization=client-b"),
            None,
        )
        .await;
        ids(&r) == [d.id.to_string()]
    })
    .await;

    // Deleting what holds something is refused, and says how to go on.
    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{base}/organizations/client-b"),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    let m = r.body["message"].as_str().unwrap();
    assert!(
        m.contains("1 group(s) and 1 device(s)") && m.contains("cascade=true"),
        "{m}"
    );
    let r = call(&p, &admin, "DELETE", &format!("{base}/groups/office"), None).await;
    assert_eq!(r.status, 409, "{r:?}");
    // Move the device out; the empty group goes, and its token is revoked.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/devices/{}/move", d.id),
        Some(r#"{"organization":"client-a"}"#),
    )
    .await;
    assert_eq!(
        (r.status, r.body["organization"].as_str()),
        (200, Some("client-a")),
        "{r:?}"
    );
    assert!(r.body["group"].is_null(), "{r:?}");
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/devices/{}/move", d.id),
        Some(r#"{"organization":"client-a","group":"office"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "a group of another organization: {r:?}");
    let r = call(&p, &admin, "DELETE", &format!("{base}/groups/office"), None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = call(&p, &admin, "GET", &format!("{base}/groups/office"), None).await;
    assert_eq!(r.status, 404, "{r:?}");
    let (_, tr) = p.auth.tokens(&t).await.unwrap().remove(0);
    assert!(
        tr.revoked_at.is_some(),
        "the token naming the deleted group is revoked"
    );
    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{base}/organizations/client-b"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");

    // A cascade: refused, then done; its device is deleted with it.
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{base}/organizations/client-a/groups"),
        Some(r#"{"id":"lab"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{base}/organizations/client-a"),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    // A role binding on the organization would reach a new one of the same id: refused too.
    let _viewer = token_for(
        &p,
        "client-a-viewer",
        vec![Binding {
            role: Role::Viewer,
            scope: Scope::Organization {
                tenant: t.clone(),
                organization: "client-a".into(),
            },
        }],
    )
    .await;
    let cascade = format!("{base}/organizations/client-a?cascade=true");
    let r = call(&p, &admin, "DELETE", &cascade, None).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("client-a-viewer"),
        "{r:?}"
    );
    assert!(
        p.auth.device_entry(&t, &d.id).await.unwrap().is_some(),
        "nothing was deleted"
    );
    p.auth
        .delete_user(&"client-a-viewer".parse().unwrap(), "test")
        .await
        .unwrap();
    let r = call(&p, &admin, "DELETE", &cascade, None).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(p.auth.device_entry(&t, &d.id).await.unwrap().is_none());
    assert!(p.auth.group(&t, "lab").await.unwrap().is_none());
    assert!(
        d.conn
            .events
            .wait_for(Duration::from_secs(2), |e| matches!(e, Event::Disconnected))
            .await,
        "the cascade revoked the device"
    );
    let r = call(&p, &admin, "GET", &format!("{base}/organizations"), None).await;
    assert!(ids(&r).is_empty(), "{r:?}");

    // Every change is in the audit trail.
    let kinds = audit_kinds(&p, &t).await;
    for k in [
        "organization.create",
        "organization.rename",
        "organization.delete",
        "group.create",
        "group.rename",
        "group.move",
        "group.delete",
        "device.move",
        "device.delete",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_device_is_dropped_cannot_come_back_and_its_reports_are_gone() {
    let p = start().await;
    let t = p.tenant("acme").await.unwrap().id;
    let _tasks = p.serve().await.unwrap();
    let admin = token_for(&p, "admin", at(Role::Admin, &t)).await;
    let tech = token_for(&p, "tech", at(Role::Technician, &t)).await;
    let base = format!("/v1/tenants/{t}");
    p.place(&t, "o1", Some("g1")).await.unwrap();
    let tok = api_token(
        &p,
        &admin,
        &t,
        r#"{"organization":"o1","group":"g1","max_uses":2}"#,
    )
    .await;
    let victim = enroll(&p, &tok, "victim").await;
    let bystander = enroll(&p, &tok, "bystander").await;
    for seq in 1..=3 {
        heartbeat(&victim, seq).await;
        heartbeat(&bystander, seq).await;
    }
    eventually("the latest reports are indexed", async || {
        p.auth
            .latest(&t, &victim.id, Kind::Heartbeat)
            .await
            .unwrap()
            .is_some()
            && p.auth
                .latest(&t, &bystander.id, Kind::Heartbeat)
                .await
                .unwrap()
                .is_some()
    })
    .await;
    assert_eq!(history(&p, &victim.account, &victim.id).await, 3);
    eventually("the index holds the device", async || {
        call(
            &p,
            &admin,
            "GET",
            &format!("{base}/devices/{}", victim.id),
            None,
        )
        .await
        .status
            == 200
    })
    .await;
    let (rec, _) = p.auth.device_entry(&t, &victim.id).await.unwrap().unwrap();
    // A user watching both devices.
    let on = |d: &DeviceId| Binding {
        role: Role::Viewer,
        scope: Scope::Device {
            tenant: t.clone(),
            device: d.clone(),
        },
    };
    token_for(&p, "watcher", vec![on(&victim.id), on(&bystander.id)]).await;

    // A technician may not delete.
    let r = call(
        &p,
        &tech,
        "DELETE",
        &format!("{base}/devices/{}", victim.id),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(p.auth.device_entry(&t, &victim.id).await.unwrap().is_some());

    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{base}/devices/{}", victim.id),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    // The watcher's binding on the deleted device went with it; the other stays.
    let watcher = p.auth.user(&"watcher".parse().unwrap()).await.unwrap();
    assert_eq!(watcher.bindings, vec![on(&bystander.id)]);
    assert!(
        audit_kinds(&p, &t)
            .await
            .contains(&"user.bindings_dropped".to_owned())
    );
    // Dropped at once, and its reconnects are refused.
    assert!(
        victim
            .conn
            .events
            .wait_for(Duration::from_secs(1), |e| matches!(e, Event::Disconnected))
            .await,
        "still connected after the delete: {:?}",
        victim.conn.events.all()
    );
    assert!(
        victim
            .conn
            .events
            .wait_for(Duration::from_secs(5), |e| matches!(
                e,
                Event::ServerError(_)
            ))
            .await
            && victim.conn.events.saw_authorization_error(),
        "{:?}",
        victim.conn.events.all()
    );
    // Renewal: an unknown device.
    let e = p
        .auth
        .renew(
            &victim.account.parse().unwrap(),
            &victim.id,
            rec.public_key.as_str(),
            RenewRequest::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unknown_device", "{e}");
    // Re-enrollment with the old key, even with a valid token: refused, and nothing consumed.
    let again = api_token(&p, &admin, &t, r#"{"organization":"o1"}"#).await;
    let (s, v) = p
        .post_enroll(wegweiser_tests::enroll_body(
            &again,
            &victim.kp,
            &wegweiser_tests::facts("victim"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");
    // Its reports are gone, the bystander's are not.
    assert!(
        p.auth
            .latest(&t, &victim.id, Kind::Heartbeat)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(history(&p, &victim.account, &victim.id).await, 0);
    assert!(
        p.auth
            .latest(&t, &bystander.id, Kind::Heartbeat)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(history(&p, &bystander.account, &bystander.id).await, 3);
    // Gone from the API; the bystander still works.
    eventually("the index drops the device", async || {
        call(
            &p,
            &admin,
            "GET",
            &format!("{base}/devices/{}", victim.id),
            None,
        )
        .await
        .status
            == 404
    })
    .await;
    let r = call(&p, &admin, "GET", &format!("{base}/devices"), None).await;
    assert_eq!(ids(&r), [bystander.id.to_string()]);
    heartbeat(&bystander, 4).await;
    assert!(
        !bystander
            .conn
            .events
            .all()
            .iter()
            .any(|e| matches!(e, Event::Disconnected))
    );
    // The same machine enrolls again as a new device, with a new key.
    let fresh = enroll(&p, &again, "victim").await;
    assert_ne!(fresh.id, victim.id);
    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{base}/devices/{}", victim.id),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(
        audit_kinds(&p, &t)
            .await
            .iter()
            .any(|k| k == "device.delete")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_and_names_are_refused_with_clear_errors() {
    let p = start().await;
    let t = p.tenant("acme").await.unwrap().id;
    let _tasks = p.serve().await.unwrap();
    let admin = token_for(&p, "admin", at(Role::Admin, &t)).await;
    let orgs = format!("/v1/tenants/{t}/organizations");
    let long_id = "a".repeat(64);
    let long_name = "n".repeat(201);
    let cases = [
        (r#"{"id":"Client-A"}"#.to_owned(), "contains 'C'"),
        (r#"{"id":"a.b"}"#.to_owned(), "contains '.'"),
        (r#"{"id":"a*"}"#.to_owned(), "contains '*'"),
        (r#"{"id":">"}"#.to_owned(), "lowercase letters"),
        (r#"{"id":"-a"}"#.to_owned(), "starts or ends with '-'"),
        (r#"{"id":""}"#.to_owned(), "is empty"),
        (format!(r#"{{"id":"{long_id}"}}"#), "64 characters"),
        (
            format!(r#"{{"id":"ok","name":"{long_name}"}}"#),
            "at most 200",
        ),
        (
            r#"{"id":"ok","name":"a\nb"}"#.to_owned(),
            "control characters",
        ),
        (r#"{"id":"ok","name":"   "}"#.to_owned(), "name is empty"),
        (
            r#"{"id":"ok","colour":"red"}"#.to_owned(),
            "malformed request body",
        ),
        ("not json".to_owned(), "malformed request body"),
    ];
    for (body, says) in &cases {
        let r = call(&p, &admin, "POST", &orgs, Some(body)).await;
        assert_eq!((r.status, r.code()), (400, "bad_request"), "{body}: {r:?}");
        let m = r.body["message"].as_str().unwrap();
        assert!(m.contains(says), "{body}: {m}");
    }
    // Nothing was made.
    let r = call(&p, &admin, "GET", &orgs, None).await;
    assert!(ids(&r).is_empty(), "{r:?}");
    // The same rules for groups, renames and moves.
    let r = call(&p, &admin, "POST", &orgs, Some(r#"{"id":"ok"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{orgs}/ok/groups"),
        Some(r#"{"id":"G_1"}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("{orgs}/ok"),
        Some(&format!(r#"{{"name":"{long_name}"}}"#)),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = call(
        &p,
        &admin,
        "POST",
        &format!("{orgs}/ok/groups"),
        Some(r#"{"id":"g1"}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("/v1/tenants/{t}/groups/g1"),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("give a new name"),
        "{r:?}"
    );
    // A bad name with a move: nothing happens at all.
    let r = call(&p, &admin, "POST", &orgs, Some(r#"{"id":"other"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = call(
        &p,
        &admin,
        "PATCH",
        &format!("/v1/tenants/{t}/groups/g1"),
        Some(&format!(
            r#"{{"organization":"other","name":"{long_name}"}}"#
        )),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        p.auth.group(&t, "g1").await.unwrap().unwrap().organization,
        "ok"
    );
    let r = call(
        &p,
        &admin,
        "DELETE",
        &format!("{orgs}/ok?cascade=maybe"),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    // An id that cannot exist in a path is simply not found.
    let r = call(&p, &admin, "GET", &format!("{orgs}/Not.An.Id"), None).await;
    assert_eq!(r.status, 404, "{r:?}");
    // The library says the same to the CLI.
    let e = p
        .auth
        .create_organization(&t, "Bad Id", None, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("lowercase letters"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_already_in_use_become_objects_when_the_service_starts() {
    let p = start().await;
    let t = p.tenant("acme").await.unwrap().id;
    // A token written before organizations were objects: its labels name nothing yet.
    let js = jetstream::new(p.auth.cp_client().clone());
    let tokens = js
        .get_key_value(wegweiser_cp::authority::TOKENS_BUCKET)
        .await
        .unwrap();
    let now = wegweiser_shared::time::now();
    let legacy = TokenRecord {
        id: "0123456789ab".into(),
        tenant: t.clone(),
        organization: Some("legacy-org".into()),
        group: Some("legacy-grp".into()),
        label: "before the hierarchy".into(),
        created_at: now,
        expires_at: now + 3600,
        max_uses: 1,
        uses: 0,
        revoked_at: None,
    };
    tokens
        .put(
            "0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123",
            serde_json::to_vec(&legacy).unwrap().into(),
        )
        .await
        .unwrap();
    // A spent one names nothing that still matters.
    let spent = TokenRecord {
        id: "fedcba987654".into(),
        organization: Some("spent-org".into()),
        group: None,
        revoked_at: Some(now),
        ..legacy.clone()
    };
    tokens
        .put(
            "fedcba987654fedcba987654fedcba987654fedcba987654fedcba987654fedc",
            serde_json::to_vec(&spent).unwrap().into(),
        )
        .await
        .unwrap();
    assert!(
        p.auth
            .organization(&t, "legacy-org")
            .await
            .unwrap()
            .is_none()
    );

    let _tasks = p.serve().await.unwrap();
    let admin = token_for(&p, "admin", at(Role::Admin, &t)).await;
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("/v1/tenants/{t}/organizations"),
        None,
    )
    .await;
    assert_eq!(ids(&r), ["legacy-org"], "{r:?}");
    assert_eq!(r.body["items"][0]["created_by"], "migration");
    let r = call(
        &p,
        &admin,
        "GET",
        &format!("/v1/tenants/{t}/groups/legacy-grp"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.body["organization"].as_str()),
        (200, Some("legacy-org")),
        "{r:?}"
    );

    // A device record labelled the old way (here: rewritten in the store).
    let tok = p.token(&t, 1).await.unwrap();
    let d = enroll(&p, tok.expose(), "old-machine").await;
    let devices = js
        .get_key_value(wegweiser_cp::authority::DEVICES_BUCKET)
        .await
        .unwrap();
    let (mut rec, _) = p.auth.device_entry(&t, &d.id).await.unwrap().unwrap();
    rec.organization = Some("old-org".into());
    rec.group = Some("old-grp".into());
    devices
        .put(
            format!("{t}.{}", d.id),
            serde_json::to_vec(&rec).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(p.auth.migrate_hierarchy().await.unwrap(), 2);
    assert_eq!(
        p.auth
            .group(&t, "old-grp")
            .await
            .unwrap()
            .unwrap()
            .organization,
        "old-org"
    );
    // Run again: nothing more to do.
    assert_eq!(p.auth.migrate_hierarchy().await.unwrap(), 0);
    // And the migrated objects behave like any other: the device moves.
    eventually("the index holds the device", async || {
        call(
            &p,
            &admin,
            "POST",
            &format!("/v1/tenants/{t}/devices/{}/move", d.id),
            Some(r#"{"organization":"legacy-org","group":"legacy-grp"}"#),
        )
        .await
        .status
            == 200
    })
    .await;
    let (moved, _) = p.auth.device_entry(&t, &d.id).await.unwrap().unwrap();
    assert_eq!(moved.group.as_deref(), Some("legacy-grp"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_while_its_organization_is_deleted_does_not_outlive_it() {
    let p = start().await;
    let t = p.tenant("acme").await.unwrap().id;
    for round in 0..20 {
        let org = format!("o{round}");
        p.auth
            .create_organization(&t, &org, None, "test")
            .await
            .unwrap();
        let g = format!("g{round}");
        let (deleted, group) = tokio::join!(
            p.auth.delete_organization(&t, &org, false, "test"),
            p.auth.create_group(&t, &org, &g, None, "test")
        );
        // The deletion may be refused (the group came first); otherwise no group is left.
        let org_left = p.auth.organization(&t, &org).await.unwrap().is_some();
        let groups = p.auth.groups(&t, Some(&org)).await.unwrap();
        assert_eq!(
            org_left,
            deleted.is_err(),
            "round {round}: {deleted:?} {group:?}"
        );
        if !org_left {
            assert!(
                groups.is_empty(),
                "round {round}: group {groups:?} outlived its organization ({group:?})"
            );
        } else {
            assert_eq!(groups.len(), 1, "round {round}");
        }
    }
}
