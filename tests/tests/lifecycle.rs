//! Credential lifecycle against a real nats-server: revocation, signing-key rotation without
//! loss, refused JWTs, tenant deletion, and clear errors.
#![allow(clippy::unwrap_used)]

use async_nats::{Event, HeaderMap};
use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use wegweiser_cp::{
    authority::{AuthorityError, NewTenant},
    tenant::TenantRecord,
};
use wegweiser_shared::{
    ids::{DeviceId, UserKey},
    jwt::{self, AccountNats, Claims, JwtError, UserNats},
    subject::{self, Token},
    time,
};
use wegweiser_tests::{Platform, UserConn};

async fn tenant(p: &Platform, id: &str) -> TenantRecord {
    p.auth
        .create_tenant(NewTenant {
            id: id.parse().unwrap(),
            name: None,
            limits: None,
            retention_days: None,
        })
        .await
        .unwrap()
}

async fn device(
    p: &Platform,
    t: &TenantRecord,
    id: &str,
) -> (UserConn, UserKey, Arc<nkeys::KeyPair>) {
    let dev: DeviceId = id.parse().unwrap();
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let user: UserKey = kp.public_key().parse().unwrap();
    let jwt = p
        .auth
        .issue_device_jwt(&t.id, &dev, &user, Some(600))
        .await
        .unwrap();
    let conn = p.connect_user(jwt.jwt, kp.clone(), id).await.unwrap();
    (conn, user, kp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_dropped_at_once_and_cannot_come_back() {
    let p = Platform::start().await.unwrap();
    let t = tenant(&p, "acme").await;
    let (victim, victim_key, victim_kp) = device(&p, &t, "victim").await;
    let (other, _, _) = device(&p, &t, "bystander").await;
    // A control-plane responder proves the bystander still works afterwards.
    let cp = p.auth.cp_client().clone();
    let mut echo = cp.subscribe("wg.*.up.*.echo").await.unwrap();
    p.wait_subscribed(p.auth.cp_account(), &["wg.*.up.*.echo".to_owned()])
        .await
        .unwrap();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = echo.next().await {
            if let Some(r) = m.reply {
                let _ = cp.publish(r, m.payload).await;
            }
        }
    });
    let victim_jwt = p
        .auth
        .issue_device_jwt(&t.id, &"victim".parse().unwrap(), &victim_key, Some(600))
        .await
        .unwrap();

    let started = Instant::now();
    p.auth.revoke(&t.id, &victim_key).await.unwrap();
    let revoked_after = started.elapsed();
    let dropped = victim
        .events
        .wait_for(Duration::from_secs(1), |e| matches!(e, Event::Disconnected))
        .await;
    assert!(
        dropped,
        "revoked device still connected 1 s after revoke returned ({revoked_after:?}); events: {:?}",
        victim.events.all()
    );
    // Its reconnect attempts are refused.
    assert!(
        victim
            .events
            .wait_for(Duration::from_secs(5), |e| matches!(
                e,
                Event::ServerError(_)
            ))
            .await
    );
    assert!(
        victim.events.saw_authorization_error(),
        "{:?}",
        victim.events.all()
    );
    // A fresh connection with any JWT issued before the revocation is refused.
    let e = p
        .connect_user(victim_jwt.jwt.clone(), victim_kp, "victim")
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{e}"
    );
    // And no new JWT is issued for that key.
    let e = p
        .auth
        .issue_device_jwt(&t.id, &"victim".parse().unwrap(), &victim_key, None)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthorityError::Revoked(_)), "{e}");
    // The bystander never noticed.
    assert!(
        !other
            .events
            .all()
            .iter()
            .any(|e| matches!(e, Event::Disconnected))
    );
    let a: UserKey = victim_key.clone();
    let _ = a;
    let reply = other
        .client
        .request(
            subject::up(
                &t.account,
                &"bystander".parse().unwrap(),
                &[Token::from_static("echo")],
            ),
            "hi".into(),
        )
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"hi");
}

struct Publisher {
    acked: BTreeSet<String>,
}

/// Publishes telemetry as requests with message ids; retries the same id until acknowledged.
async fn publish_until(
    conn: &UserConn,
    account: &str,
    dev: &str,
    stop: Arc<AtomicBool>,
) -> Publisher {
    let mut acked = BTreeSet::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = format!("{dev}-{seq}");
        let subj = format!("wg.{account}.up.{dev}.tel.metrics");
        for attempt in 0.. {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            let r = tokio::time::timeout(
                Duration::from_secs(2),
                conn.client
                    .request_with_headers(subj.clone(), h, format!("{seq}").into()),
            )
            .await;
            match r {
                Ok(Ok(m)) => {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    assert!(v.get("error").is_none(), "JetStream refused: {v}");
                    acked.insert(id.clone());
                    break;
                }
                _ if attempt < 50 => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("message {id} never acknowledged: {other:?}"),
            }
        }
    }
    Publisher { acked }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_loses_nothing_and_raises_no_authorization_error() {
    let p = Platform::start().await.unwrap();
    let t = tenant(&p, "rotating").await;
    // The control plane stores telemetry and acknowledges it (through the tenant's import).
    let js = async_nats::jetstream::new(p.auth.cp_client().clone());
    let (mut stream, _) = wegweiser_cp::ingest::open(&js, 1, 1).await.unwrap();
    let old_device_key = t.signing_keys[0].key.clone();
    let mut devices = Vec::new();
    for i in 0..3 {
        let name = format!("dev{i}");
        let (conn, user, _) = device(&p, &t, &name).await;
        devices.push((Arc::new(conn), user, name));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (conn, _, name) in &devices {
        let (conn, name, stop, acct) = (
            conn.clone(),
            name.clone(),
            stop.clone(),
            t.account.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            publish_until(&conn, &acct, &name, stop).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Publish the new keys, move every device to a JWT signed by them, then retire the old ones.
    let rotated = p.auth.rotate_signing_keys(&t.id).await.unwrap();
    let new_key = rotated
        .active_key(wegweiser_cp::tenant::Role::Device)
        .unwrap()
        .key
        .clone();
    assert_ne!(new_key, old_device_key);
    // While a device still uses the old key, retiring is refused.
    let e = p.auth.retire_signing_keys(&t.id, false).await.unwrap_err();
    assert!(matches!(e, AuthorityError::StillInUse { .. }), "{e}");
    for (conn, user, name) in &devices {
        let issued = p
            .auth
            .issue_device_jwt(&t.id, &name.parse().unwrap(), user, Some(600))
            .await
            .unwrap();
        assert_eq!(issued.signing_key, new_key);
        conn.jwt.set(issued.jwt);
        conn.client.force_reconnect().await.unwrap();
    }
    // Wait until the server shows every connection on the new key.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let by = p.auth.connections_by_signer(&t.account).await.unwrap();
        if by.get(&new_key) == Some(&3) && by.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "devices did not move: {by:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = p.auth.retire_signing_keys(&t.id, false).await.unwrap();
    assert_eq!(report.retired.len(), 2);
    assert_eq!(report.disconnected, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for task in tasks {
        acked.extend(task.await.unwrap().acked);
    }
    assert!(
        acked.len() > 30,
        "too little traffic to prove anything: {}",
        acked.len()
    );
    for (conn, _, name) in &devices {
        assert!(
            !conn.events.saw_authorization_error(),
            "{name} saw an authorization error: {:?}",
            conn.events.all()
        );
    }
    // Every acknowledged message is stored, exactly once.
    let messages = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored = BTreeSet::new();
    let mut seen = 0usize;
    use futures::StreamExt;
    while seen < messages {
        let mut batch = consumer.fetch().max_messages(500).messages().await.unwrap();
        let before = seen;
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .unwrap()
                .to_string();
            assert!(stored.insert(id.clone()), "message {id} was stored twice");
            seen += 1;
        }
        assert!(
            seen > before,
            "stream reports {messages} messages but only {seen} could be read"
        );
    }
    let missing: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored (first 10): {missing:?}"
    );
    // The account no longer lists the old keys, and still verifies against the operator chain.
    let acc: Claims<AccountNats> =
        jwt::decode(&p.auth.tenant(&t.id).await.unwrap().jwt, time::now()).unwrap();
    assert!(acc.nats.signing_key(&old_device_key).is_none());
    assert!(acc.nats.signing_key(&new_key).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_our_decoder_refuse_bad_jwts() {
    let p = Platform::start().await.unwrap();
    let t = tenant(&p, "strict").await;
    let (_, signer) = p.auth.signer(&t.id).await.unwrap();
    let account: Claims<AccountNats> = jwt::decode(&t.jwt, time::now()).unwrap();
    let dev: DeviceId = "dev1".parse().unwrap();
    let kp = Arc::new(nkeys::KeyPair::new_user());
    let user: UserKey = kp.public_key().parse().unwrap();
    let good = signer.issue_device(&dev, &user, 600).unwrap();
    let claims: Claims<UserNats> = jwt::decode(&good, time::now()).unwrap();

    // A valid one connects: the baseline the refusals are measured against.
    let ok = p
        .connect_user(good.clone(), kp.clone(), "dev1")
        .await
        .unwrap();
    ok.client.flush().await.unwrap();

    // Expired: signed by the same key, exp in the past.
    let seed = |role| {
        let rec = &t;
        let secrets = rec.secrets(&master(&p)).unwrap();
        let k = rec.active_key(role).unwrap().key.clone();
        nkeys::KeyPair::from_seed(secrets.signing.get(&k).unwrap()).unwrap()
    };
    let dev_sk = seed(wegweiser_cp::tenant::Role::Device);
    let mut n = UserNats::scoped();
    n.issuer_account = Some(t.account.to_string());
    let expired = Claims::new(user.as_str(), "dev1", n.clone())
        .issued_at(time::now() - 120)
        .expires_in(60)
        .encode(&dev_sk)
        .unwrap();
    let mut future = Claims::new(user.as_str(), "dev1", n.clone()).expires_in(600);
    future.nbf = Some(time::now() + 3600);
    let future = future.encode(&dev_sk).unwrap();
    // Tampered: the name (and so the device subjects) changed after signing.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut body: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    body["name"] = "*".into();
    let tampered = format!("{}.{}.{}", parts[0], b64.encode(body.to_string()), parts[2]);
    // Wrong issuer: a key the account does not list.
    let rogue = Claims::new(user.as_str(), "dev1", n.clone())
        .encode(&nkeys::KeyPair::new_account())
        .unwrap();
    // Right key, but claiming another tenant's account.
    let other = tenant(&p, "other").await;
    let mut n2 = n.clone();
    n2.issuer_account = Some(other.account.to_string());
    let cross = Claims::new(user.as_str(), "dev1", n2)
        .encode(&dev_sk)
        .unwrap();

    for (what, token, decoder_says) in [
        ("expired", &expired, "expired"),
        ("not yet valid", &future, "not valid before"),
        ("tampered", &tampered, "signature does not verify"),
        ("wrong issuer", &rogue, "not trusted"),
        ("another tenant's account", &cross, "not trusted"),
    ] {
        let e = p
            .connect_user(token.clone(), kp.clone(), "dev1")
            .await
            .expect_err(what);
        assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{what}: {e}"
        );
        let acc = if what == "another tenant's account" {
            jwt::decode(&other.jwt, time::now()).unwrap()
        } else {
            account.clone()
        };
        let reason = jwt::verify_user(token, &acc, true, time::now()).unwrap_err();
        assert!(
            reason.to_string().contains(decoder_says),
            "{what}: {reason}"
        );
    }
    assert_eq!(claims.name, "dev1");
    assert!(matches!(
        jwt::decode::<UserNats>(&tampered, time::now()).unwrap_err(),
        JwtError::BadSignature
    ));
}

fn master(p: &Platform) -> wegweiser_cp::seal::MasterKey {
    let ks = wegweiser_cp::authority::keystore(&p.data_dir()).unwrap();
    ks.master_key(None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_unique_deleted_completely_and_errors_are_clear() {
    let p = Platform::start().await.unwrap();
    let t = tenant(&p, "gone").await;
    let e = p
        .auth
        .create_tenant(NewTenant {
            id: t.id.clone(),
            name: None,
            limits: None,
            retention_days: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, AuthorityError::TenantExists(_)), "{e}");
    assert!(e.to_string().contains("already exists"));
    assert!(
        p.auth
            .resolver_accounts()
            .await
            .unwrap()
            .contains(&t.account.to_string())
    );
    let (conn, _, _) = device(&p, &t, "d1").await;

    p.auth.delete_tenant(&t.id).await.unwrap();
    assert!(
        conn.events
            .wait_for(Duration::from_secs(2), |e| matches!(e, Event::Disconnected))
            .await,
        "a deleted tenant's device stays connected"
    );
    assert!(
        !p.auth
            .resolver_accounts()
            .await
            .unwrap()
            .contains(&t.account.to_string())
    );
    let e = p.auth.tenant(&t.id).await.unwrap_err();
    assert!(matches!(e, AuthorityError::UnknownTenant(_)), "{e}");
    assert!(e.to_string().contains("wegweiser tenant list"));
    // The id can be used again, for a new account.
    let again = tenant(&p, "gone").await;
    assert_ne!(again.account, t.account);
    // Revoking in an unknown tenant is a clear error.
    let e = p
        .auth
        .revoke(
            &"nope".parse().unwrap(),
            &nkeys::KeyPair::new_user().public_key().parse().unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AuthorityError::UnknownTenant(_)), "{e}");
    // Concurrent updates of one tenant all land (compare-and-set, strictly increasing iat).
    let users: Vec<UserKey> = (0..8)
        .map(|_| nkeys::KeyPair::new_user().public_key().parse().unwrap())
        .collect();
    let mut tasks = Vec::new();
    for u in users.clone() {
        let auth = p.auth.clone();
        let id = again.id.clone();
        tasks.push(tokio::spawn(async move { auth.revoke(&id, &u).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let rec = p.auth.tenant(&again.id).await.unwrap();
    for u in &users {
        assert!(
            rec.revocations.contains_key(u.as_str()),
            "a concurrent revocation was lost"
        );
    }
    assert!(rec.last_iat >= again.last_iat + 8);
    p.auth.verify_applied(&rec).await.unwrap();
    // Revoked keys stay banned from issuance even when their JWT revocation is pruned.
    assert_eq!(rec.banned_users.len(), users.len());
    // Lifetimes beyond the configured maximum are refused.
    let e = p
        .auth
        .issue_device_jwt(
            &again.id,
            &"d2".parse().unwrap(),
            &nkeys::KeyPair::new_user().public_key().parse().unwrap(),
            Some(365 * 86_400),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AuthorityError::BadLifetime { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let p = Platform::start().await.unwrap();
    let dir = p.data_dir();
    let Platform {
        server,
        auth,
        dir: _keep,
        ..
    } = p;
    drop(auth);
    server.unwrap().stop().await;
    let e = wegweiser_cp::authority::Authority::open(&dir)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthorityError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("wegweiser up"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_creds_load_in_async_nats_and_plaintext_is_refused() {
    let p = Platform::start().await.unwrap();
    let t = tenant(&p, "creds").await;
    let c = p
        .auth
        .issue_technician_creds(
            &t.id,
            &"alice".parse().unwrap(),
            &wegweiser_cp::tenant::TechnicianScope::AllDevices,
            Some(600),
        )
        .await
        .unwrap();
    // async-nats parses the creds file itself (the same layout nsc writes).
    let client = async_nats::ConnectOptions::with_credentials(c.creds.expose())
        .unwrap()
        .add_root_certificates(p.ca.clone())
        .require_tls(true)
        .custom_inbox_prefix("_INBOX.alice")
        .connect(&p.url)
        .await
        .unwrap();
    let (dev, _, _) = device(&p, &t, "watched").await;
    let mut sub = client
        .subscribe(subject::up_all(&t.account, &"watched".parse().unwrap()))
        .await
        .unwrap();
    client.flush().await.unwrap();
    p.wait_subscribed(
        &t.account,
        &[subject::up_all(&t.account, &"watched".parse().unwrap())],
    )
    .await
    .unwrap();
    dev.client
        .publish(
            subject::up(
                &t.account,
                &"watched".parse().unwrap(),
                &[Token::from_static("hb")],
            ),
            "1".into(),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert!(m.subject.ends_with(".watched.hb"));
    // Without TLS the server refuses the client.
    let plain = p.url.replace("tls://", "nats://");
    let r = async_nats::ConnectOptions::with_credentials(c.creds.expose())
        .unwrap()
        .connection_timeout(Duration::from_secs(2))
        .connect(&plain)
        .await;
    assert!(r.is_err(), "a plaintext connection was accepted");
}
