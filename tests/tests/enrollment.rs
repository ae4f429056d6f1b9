//! Enrollment over HTTPS and the device credential lifecycle, against a real nats-server and
//! the real control-plane HTTPS server.
#![allow(clippy::unwrap_used)]

use async_nats::Event;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use wegweiser_cp::{
    config::EnrollmentConfig,
    enrollment::{DeviceState, NewToken},
};
use wegweiser_shared::{
    enroll::{DeviceFacts, RenewRequest, RenewResponse},
    ids::{DeviceId, TenantId},
    subject::{self, Token},
};
use wegweiser_tests::{Platform, PlatformOptions};

fn facts(machine: &str) -> DeviceFacts {
    DeviceFacts {
        hostname: format!("host-{machine}"),
        os: "linux".into(),
        os_version: "Debian 12".into(),
        arch: "x86_64".into(),
        machine_id: machine.into(),
        agent_version: "test".into(),
    }
}

fn body(token: &str, key: &nkeys::KeyPair, machine: &str) -> Vec<u8> {
    wegweiser_tests::enroll_body(token, key, &facts(machine), None)
}

/// A body whose key cannot be proven (it is not a user key at all).
fn body_raw(token: &str, key: &str, machine: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"token": token, "public_key": key, "proof": "AAAA", "facts": facts(machine)}),
    )
    .unwrap()
}

async fn setup(opts: PlatformOptions) -> (Platform, TenantId, wegweiser_cp::cli::ServiceTasks) {
    let p = Platform::start_with(opts).await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let tasks = p.serve().await.unwrap();
    (p, t.id, tasks)
}

async fn token(p: &Platform, tenant: &TenantId, uses: u32, ttl: Option<i64>) -> String {
    p.place(tenant, "client-a", None).await.unwrap();
    let (t, _) = p
        .auth
        .create_token(NewToken {
            tenant: tenant.clone(),
            organization: Some("client-a".into()),
            group: None,
            ttl_secs: ttl,
            max_uses: Some(uses),
            label: "test".into(),
        })
        .await
        .unwrap();
    t.expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_issues_a_working_device_identity() {
    let (p, tenant, _tasks) = setup(PlatformOptions::default()).await;
    let tok = token(&p, &tenant, 1, None).await;
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let (status, v) = p.post_enroll(body(&tok, &kp, "m-1")).await.unwrap();
    assert_eq!(status, 200, "{v}");
    let device: DeviceId = v["device_id"].as_str().unwrap().parse().unwrap();
    let account = v["account"].as_str().unwrap().to_owned();
    assert!(
        v["nats_ca_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(v["reenrolled"], false);
    // The device record names the token that enrolled it, and the token lists the device.
    let (rec, _) = p
        .auth
        .device_entry(&tenant, &device)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.organization.as_deref(), Some("client-a"));
    let tokens = p.auth.tokens(&tenant).await.unwrap();
    assert_eq!(rec.enrolled_by, tokens[0].1.id);
    assert_eq!(
        p.auth.token_devices(&tenant).await.unwrap()[&tokens[0].1.id],
        vec![device.clone()]
    );
    // The JWT works: the device publishes on its own subject and the control plane sees it.
    let conn = p
        .connect_user(
            v["jwt"].as_str().unwrap().into(),
            kp.clone(),
            device.as_str(),
        )
        .await
        .unwrap();
    let mut sub = p
        .auth
        .cp_client()
        .subscribe(subject::EXPORT_UP)
        .await
        .unwrap();
    p.auth.cp_client().flush().await.unwrap();
    p.wait_subscribed(p.auth.cp_account(), &[subject::EXPORT_UP.to_owned()])
        .await
        .unwrap();
    let acc = account.parse().unwrap();
    conn.client
        .publish(
            subject::up(&acc, &device, &[Token::from_static("hb")]),
            "1".into(),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.subject.as_str(),
        subject::up(&acc, &device, &[Token::from_static("hb")])
    );
    // The same token cannot be used twice.
    let (status, v) = p
        .post_enroll(body(&tok, &nkeys::KeyPair::new_user(), "m-2"))
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (410, Some("token_used")),
        "{v}"
    );
    // Security headers on every response.
    let agent = p.https();
    let url = format!("{}/healthz", p.https_url());
    let r = tokio::task::spawn_blocking(move || agent.get(&url).call().unwrap())
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_raced_by_twenty_enrollments_admits_exactly_one() {
    // Loopback is allow-listed: 19 refusals from one address would otherwise block it (tested
    // separately), and the winner could arrive after the block.
    let (p, tenant, _tasks) = setup(PlatformOptions {
        enrollment: Some(wegweiser_cp::config::EnrollmentConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let tok = token(&p, &tenant, 1, None).await;
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (p, tok) = (p.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            p.post_enroll(body(
                &tok,
                &nkeys::KeyPair::new_user(),
                &format!("race-{i}"),
            ))
            .await
            .unwrap()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match status {
            200 => ok += 1,
            410 => assert_eq!(v["code"], "token_used", "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        p.auth.devices(&tenant).await.unwrap().len(),
        1,
        "losers created nothing"
    );
    let t = &p.auth.tokens(&tenant).await.unwrap()[0].1;
    assert_eq!(t.uses, 1);
    assert_eq!(p.auth.token_devices(&tenant).await.unwrap()[&t.id].len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_keys_and_bodies_get_clear_errors_and_create_nothing() {
    let (p, tenant, _tasks) = setup(PlatformOptions::default()).await;
    let good_key = nkeys::KeyPair::new_user();
    let expired = token(&p, &tenant, 1, Some(60)).await;
    let revoked = token(&p, &tenant, 1, None).await;
    let list = p.auth.tokens(&tenant).await.unwrap();
    let revoked_id = list
        .iter()
        .find(|(h, _)| *h == wegweiser_cp::enrollment::token_hash(&revoked))
        .unwrap()
        .1
        .id
        .clone();
    p.auth.revoke_token(&tenant, &revoked_id).await.unwrap();
    let valid = token(&p, &tenant, 5, None).await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unknown token",
            body(
                "wgt_0000000000000000000000000000000000000000",
                &good_key,
                "m",
            ),
            401,
            "invalid_token",
        ),
        (
            "malformed token",
            body("hello", &good_key, "m"),
            401,
            "invalid_token",
        ),
        (
            "revoked token",
            body(&revoked, &good_key, "m"),
            410,
            "token_revoked",
        ),
        (
            "account key instead of user key",
            body_raw(&valid, &nkeys::KeyPair::new_account().public_key(), "m"),
            400,
            "bad_request",
        ),
        (
            "garbage key",
            body_raw(&valid, "UNOTAKEY", "m"),
            400,
            "bad_request",
        ),
        ("not json", b"{{{".to_vec(), 400, "bad_request"),
        (
            "missing fields",
            br#"{"token":"x"}"#.to_vec(),
            400,
            "bad_request",
        ),
        ("oversized", vec![b' '; 20 * 1024], 400, "bad_request"),
        (
            "empty machine id",
            body(&valid, &good_key, ""),
            400,
            "bad_request",
        ),
    ];
    for (what, b, status, code) in cases {
        let (s, v) = p.post_enroll(b).await.unwrap();
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{what}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(
            !msg.contains(&valid) && !msg.contains(&revoked),
            "{what}: the token leaked into {msg}"
        );
    }
    // The expired one: its record is moved past its expiry in the store.
    let kv = async_nats::jetstream::new(p.auth.cp_client().clone())
        .get_key_value(wegweiser_cp::authority::TOKENS_BUCKET)
        .await
        .unwrap();
    let h = wegweiser_cp::enrollment::token_hash(&expired);
    let mut rec: serde_json::Value =
        serde_json::from_slice(&kv.get(&h).await.unwrap().unwrap()).unwrap();
    rec["expires_at"] = (wegweiser_shared::time::now() - 1).into();
    kv.put(&h, serde_json::to_vec(&rec).unwrap().into())
        .await
        .unwrap();
    let (s, v) = p.post_enroll(body(&expired, &good_key, "m")).await.unwrap();
    assert_eq!((s, v["code"].as_str()), (410, Some("token_expired")), "{v}");
    assert!(
        p.auth.devices(&tenant).await.unwrap().is_empty(),
        "nothing was created"
    );
    let v = list_uses(&p, &tenant, &valid).await;
    assert_eq!(v, 0, "failed enrollments consumed no use");
}

async fn list_uses(p: &Platform, tenant: &TenantId, token: &str) -> u32 {
    let h = wegweiser_cp::enrollment::token_hash(token);
    p.auth
        .tokens(tenant)
        .await
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == h)
        .unwrap()
        .1
        .uses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_block_an_address_until_the_block_expires() {
    let (p, tenant, _tasks) = setup(PlatformOptions {
        enrollment: Some(EnrollmentConfig {
            max_failures: 3,
            block_secs: 2,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let valid = token(&p, &tenant, 1, None).await;
    for _ in 0..3 {
        let (s, _) = p.post_enroll(body_raw("wgt_bad", "U", "m")).await.unwrap();
        assert_ne!(s, 200);
    }
    // Blocked now, even with a valid token.
    let key = nkeys::KeyPair::new_user();
    let (s, v) = p.post_enroll(body(&valid, &key, "m")).await.unwrap();
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("address_blocked")),
        "{v}"
    );
    let metrics = {
        let agent = p.https();
        let url = format!("{}/metrics", p.https_url());
        tokio::task::spawn_blocking(move || {
            agent
                .get(&url)
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(metrics.contains("wegweiser_ip_blocks_total 1"), "{metrics}");
    // The block expires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, v) = p.post_enroll(body(&valid, &key, "m")).await.unwrap();
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_addresses_are_never_blocked_and_denied_ones_always_are() {
    let (p, tenant, _tasks) = setup(PlatformOptions {
        enrollment: Some(EnrollmentConfig {
            max_failures: 2,
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        let (s, v) = p.post_enroll(body_raw("wgt_bad", "U", "m")).await.unwrap();
        assert_ne!(v["code"], "address_blocked", "{s} {v}");
    }
    let valid = token(&p, &tenant, 1, None).await;
    let (s, _) = p
        .post_enroll(body(&valid, &nkeys::KeyPair::new_user(), "m"))
        .await
        .unwrap();
    assert_eq!(s, 200);
    drop(p);
    let (p, tenant, _tasks) = setup(PlatformOptions {
        enrollment: Some(EnrollmentConfig {
            deny: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    let valid = token(&p, &tenant, 1, None).await;
    let (s, v) = p
        .post_enroll(body(&valid, &nkeys::KeyPair::new_user(), "m"))
        .await
        .unwrap();
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("address_denied")),
        "{v}"
    );
}

/// Enrolls through HTTPS and returns (device, account, jwt, key).
async fn enroll(
    p: &Platform,
    tenant: &TenantId,
    machine: &str,
) -> (DeviceId, String, String, Arc<nkeys::KeyPair>) {
    let tok = token(p, tenant, 1, None).await;
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let (status, v) = p.post_enroll(body(&tok, &kp, machine)).await.unwrap();
    assert_eq!(status, 200, "{v}");
    (
        v["device_id"].as_str().unwrap().parse().unwrap(),
        v["account"].as_str().unwrap().to_owned(),
        v["jwt"].as_str().unwrap().to_owned(),
        kp,
    )
}

async fn renew(
    conn: &async_nats::Client,
    account: &str,
    device: &DeviceId,
    req: &RenewRequest,
) -> RenewResponse {
    let subj = subject::up(
        &account.parse().unwrap(),
        device,
        &[Token::from_static("renew")],
    );
    let r = conn
        .request(subj, serde_json::to_vec(req).unwrap().into())
        .await
        .unwrap();
    serde_json::from_slice(&r.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_over_nats_moves_the_device_to_a_fresh_jwt_and_a_new_key() {
    let (p, tenant, _tasks) = setup(PlatformOptions {
        device_ttl: Some(20),
        renew_min_interval: Some(0),
        ..Default::default()
    })
    .await;
    let (device, account, jwt, kp) = enroll(&p, &tenant, "renew-1").await;
    let conn = p
        .connect_user(jwt.clone(), kp.clone(), device.as_str())
        .await
        .unwrap();
    let RenewResponse::Ok {
        jwt: fresh,
        expires_at,
    } = renew(&conn.client, &account, &device, &RenewRequest::default()).await
    else {
        panic!("renewal refused")
    };
    assert_ne!(fresh, jwt);
    assert!(expires_at > wegweiser_shared::time::now() + 10);
    conn.jwt.set(fresh);
    let connects = || {
        conn.events
            .all()
            .iter()
            .filter(|e| matches!(e, Event::Connected))
            .count()
    };
    let before = connects();
    conn.client.force_reconnect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while connects() <= before {
        assert!(
            Instant::now() < deadline,
            "no reconnect: {:?}",
            conn.events.all()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !conn.events.saw_authorization_error(),
        "{:?}",
        conn.events.all()
    );
    // Key rotation: prove the new key, get a JWT for it.
    let new_kp = nkeys::KeyPair::new_user();
    let new_key = new_kp.public_key().parse().unwrap();
    use base64::Engine;
    let proof = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        new_kp
            .sign(&wegweiser_shared::enroll::new_key_proof_message(
                &device,
                &kp.public_key(),
                &new_key,
            ))
            .unwrap(),
    );
    let bad = RenewRequest {
        new_key: Some(wegweiser_shared::enroll::NewKey {
            public_key: new_key.clone(),
            // The first character changed: the signature's first byte no longer matches.
            proof: format!(
                "{}{}",
                if proof.starts_with('A') { 'B' } else { 'A' },
                &proof[1..]
            ),
        }),
    };
    assert!(matches!(
        renew(&conn.client, &account, &device, &bad).await,
        RenewResponse::Refused(_)
    ));
    let good = RenewRequest {
        new_key: Some(wegweiser_shared::enroll::NewKey {
            public_key: new_key.clone(),
            proof,
        }),
    };
    let RenewResponse::Ok { jwt: rotated, .. } =
        renew(&conn.client, &account, &device, &good).await
    else {
        panic!("rotation refused")
    };
    let c: wegweiser_shared::jwt::Claims<wegweiser_shared::jwt::UserNats> =
        wegweiser_shared::jwt::decode(&rotated, wegweiser_shared::time::now()).unwrap();
    assert_eq!(c.sub, new_kp.public_key());
    // The old key is no longer the device's: renewing with it is refused.
    match renew(&conn.client, &account, &device, &RenewRequest::default()).await {
        RenewResponse::Refused(e) => assert_eq!(e.code, "stale_key"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_drops_it_at_once_and_refuses_renewal() {
    let (p, tenant, _tasks) = setup(PlatformOptions::default()).await;
    let (device, account, jwt, kp) = enroll(&p, &tenant, "revoke-1").await;
    let conn = p
        .connect_user(jwt, kp.clone(), device.as_str())
        .await
        .unwrap();
    let started = Instant::now();
    let rec = p.auth.revoke_device(&tenant, &device).await.unwrap();
    assert_eq!(rec.state, DeviceState::Revoked);
    assert!(
        conn.events
            .wait_for(Duration::from_secs(1), |e| matches!(e, Event::Disconnected))
            .await,
        "still connected {:?} after revoke",
        started.elapsed()
    );
    // A second device of the tenant asks on the revoked one's behalf? It cannot: its subjects are
    // its own. The revoked device itself cannot connect to ask. The responder refuses directly:
    let r = p
        .auth
        .renew(
            &account.parse().unwrap(),
            &device,
            &kp.public_key(),
            RenewRequest::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(r.code(), "revoked");
    // Coming back needs a new token, and makes a new device: a revoked one stays revoked.
    let tok = token(&p, &tenant, 1, None).await;
    let kp2 = nkeys::KeyPair::new_user();
    let (s, v) = p.post_enroll(body(&tok, &kp2, "revoke-1")).await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["device_id"].as_str().unwrap(), device.as_str());
    assert_eq!(v["reenrolled"], false);
    let (old, _) = p
        .auth
        .device_entry(&tenant, &device)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.state, DeviceState::Revoked);
    // The old key stays banned, and the failed attempt consumed nothing.
    let again = token(&p, &tenant, 1, None).await;
    let (s, v) = p
        .post_enroll(body(&again, &kp, "other-machine"))
        .await
        .unwrap();
    assert_eq!(s, 400, "{v}");
    assert_eq!(list_uses(&p, &tenant, &again).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_id_alone_cannot_take_over_a_device() {
    let (p, tenant, _tasks) = setup(PlatformOptions::default()).await;
    let (device, _, jwt, k1) = enroll(&p, &tenant, "shared-id").await;
    let victim = p
        .connect_user(jwt, k1.clone(), device.as_str())
        .await
        .unwrap();
    // Someone else claims the same machine id: a new device, the victim untouched.
    let intruder = nkeys::KeyPair::new_user();
    let (s, v) = p
        .post_enroll(body(
            &token(&p, &tenant, 1, None).await,
            &intruder,
            "shared-id",
        ))
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_ne!(v["device_id"].as_str().unwrap(), device.as_str());
    assert_eq!(v["reenrolled"], false);
    let (rec, _) = p
        .auth
        .device_entry(&tenant, &device)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.public_key.as_str(), k1.public_key());
    // A proof made with another key than the one sent is refused.
    let tok = token(&p, &tenant, 1, None).await;
    let mut forged: serde_json::Value =
        serde_json::from_slice(&body(&tok, &nkeys::KeyPair::new_user(), "m")).unwrap();
    forged["public_key"] = k1.public_key().into();
    let (s, v) = p
        .post_enroll(serde_json::to_vec(&forged).unwrap())
        .await
        .unwrap();
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_request")), "{v}");
    assert!(
        !victim
            .events
            .all()
            .iter()
            .any(|e| matches!(e, async_nats::Event::Disconnected))
    );
    // The device itself re-enrolls with a proof of its current key: same device, new key, and
    // the old key stops working at once.
    let k2 = nkeys::KeyPair::new_user();
    let body = wegweiser_tests::enroll_body(&tok, &k2, &facts("shared-id"), Some(&k1));
    let (s, v) = p.post_enroll(body).await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["device_id"].as_str().unwrap(), device.as_str());
    assert_eq!(v["reenrolled"], true);
    assert!(
        victim
            .events
            .wait_for(Duration::from_secs(2), |e| matches!(
                e,
                async_nats::Event::Disconnected
            ))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_body_is_cut_off() {
    let (p, _tenant, _tasks) = setup(PlatformOptions::default()).await;
    let port = p.auth.config().http.as_ref().unwrap().listen.port();
    let ca = p.ca.clone();
    let started = Instant::now();
    let reply = tokio::task::spawn_blocking(move || {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        use std::io::{Read, Write};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        // Promise a body and never send it.
        tls.write_all(
            b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .unwrap();
        tls.flush().unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(25));
}
