//! Isolation matrix against a real nats-server: 3 tenants × 2 devices + 1 technician each.
//! Every cross-tenant and cross-device publish and subscribe is denied or receives nothing;
//! every allowed path delivers.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeSet, sync::Arc, time::Duration};
use wegweiser_cp::{authority::NewTenant, tenant::TechnicianScope};
use wegweiser_shared::{
    ids::{AccountKey, DeviceId, UserKey},
    subject::{self, Token},
};
use wegweiser_tests::{Platform, UserConn, collect, drain};

struct Device {
    id: DeviceId,
    conn: UserConn,
}

struct Tenant {
    account: AccountKey,
    devices: Vec<Device>,
    tech: UserConn,
}

fn t(s: &'static str) -> Token {
    Token::from_static(s)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_devices_are_isolated() {
    let p = Platform::start().await.unwrap();
    let mut tenants = Vec::new();
    for i in 0..3 {
        let id = format!("tenant-{i}").parse().unwrap();
        let rec = p
            .auth
            .create_tenant(NewTenant {
                id,
                name: None,
                limits: None,
                retention_days: None,
            })
            .await
            .unwrap();
        let mut devices = Vec::new();
        for d in 0..2 {
            let dev: DeviceId = format!("t{i}-dev{d}").parse().unwrap();
            let kp = Arc::new(nkeys::KeyPair::new_user());
            let user: UserKey = kp.public_key().parse().unwrap();
            let jwt = p
                .auth
                .issue_device_jwt(&rec.id, &dev, &user, Some(600))
                .await
                .unwrap();
            let conn = p.connect_user(jwt.jwt, kp, dev.as_str()).await.unwrap();
            devices.push(Device { id: dev, conn });
        }
        // The technician may watch device 0 only.
        let creds = p
            .auth
            .issue_technician_creds(
                &rec.id,
                &format!("tech{i}").parse().unwrap(),
                &TechnicianScope::Devices(vec![devices[0].id.clone()]),
                Some(600),
            )
            .await
            .unwrap();
        let parsed = wegweiser_shared::creds::Creds::parse(creds.creds.expose()).unwrap();
        let kp = Arc::new(nkeys::KeyPair::from_seed(parsed.seed.expose()).unwrap());
        let tech = p
            .connect_user(parsed.jwt, kp, &format!("tech{i}"))
            .await
            .unwrap();
        tenants.push(Tenant {
            account: rec.account,
            devices,
            tech,
        });
    }

    // The control plane sees every up subject and answers echo requests.
    let cp = p.auth.cp_client().clone();
    let mut cp_up = collect(cp.subscribe(subject::EXPORT_UP).await.unwrap());
    let mut echo = cp.subscribe("wg.*.up.*.echo").await.unwrap();
    let responder = cp.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = echo.next().await {
            if let Some(r) = m.reply {
                let _ = responder.publish(r, m.payload).await;
            }
        }
    });

    // Subscriptions: allowed ones collect, forbidden ones must stay empty.
    let mut own_down = Vec::new();
    let mut forbidden = Vec::new();
    let mut tech_scope = Vec::new();
    for (ti, tn) in tenants.iter().enumerate() {
        let other = &tenants[(ti + 1) % 3];
        for (di, d) in tn.devices.iter().enumerate() {
            let c = &d.conn.client;
            own_down.push(collect(
                c.subscribe(subject::down_all(&tn.account, &d.id))
                    .await
                    .unwrap(),
            ));
            let sibling = &tn.devices[1 - di].id;
            for s in [
                ">".to_owned(),
                subject::EXPORT_DOWN.to_owned(),
                subject::EXPORT_UP.to_owned(),
                subject::down_all(&tn.account, sibling),
                subject::up_all(&tn.account, sibling),
                subject::down_all(&other.account, &other.devices[di].id),
                format!("_INBOX.{sibling}.>"),
                "_INBOX.>".to_owned(),
            ] {
                forbidden.push((
                    format!("device {} sub {s}", d.id),
                    collect(c.subscribe(s).await.unwrap()),
                ));
            }
        }
        let tc = &tn.tech.client;
        tech_scope.push(collect(
            tc.subscribe(subject::up_all(&tn.account, &tn.devices[0].id))
                .await
                .unwrap(),
        ));
        for s in [
            ">".to_owned(),
            subject::EXPORT_UP.to_owned(),
            subject::up_all(&tn.account, &tn.devices[1].id),
            subject::down_all(&tn.account, &tn.devices[0].id),
            subject::up_all(&other.account, &other.devices[0].id),
            format!("_INBOX.{}.>", tn.devices[0].id),
        ] {
            forbidden.push((
                format!("tech of tenant {ti} sub {s}"),
                collect(tc.subscribe(s).await.unwrap()),
            ));
        }
    }
    // The allowed subscriptions are in place at the server (the forbidden ones never will be).
    p.wait_subscribed(
        p.auth.cp_account(),
        &[subject::EXPORT_UP.to_owned(), "wg.*.up.*.echo".to_owned()],
    )
    .await
    .unwrap();
    for tn in &tenants {
        let mut allowed: Vec<String> = tn
            .devices
            .iter()
            .map(|d| subject::down_all(&tn.account, &d.id))
            .collect();
        allowed.push(subject::up_all(&tn.account, &tn.devices[0].id));
        p.wait_subscribed(&tn.account, &allowed).await.unwrap();
    }
    settle().await;

    // Forbidden publishes.
    for (ti, tn) in tenants.iter().enumerate() {
        let other = &tenants[(ti + 1) % 3];
        for (di, d) in tn.devices.iter().enumerate() {
            let sibling = &tn.devices[1 - di].id;
            let c = &d.conn.client;
            for s in [
                subject::up(&tn.account, sibling, &[t("forged")]),
                subject::up(&other.account, &d.id, &[t("forged")]),
                subject::up(&other.account, &other.devices[di].id, &[t("forged")]),
                subject::down(&tn.account, &d.id, &[t("self")]),
                subject::down(&tn.account, sibling, &[t("forged")]),
                format!("_INBOX.{sibling}.forged"),
                "$JS.API.STREAM.LIST".to_owned(),
                "$SYS.REQ.CLAIMS.LIST".to_owned(),
            ] {
                c.publish(s, "x".into()).await.unwrap();
            }
            c.flush().await.unwrap();
        }
        let tc = &tn.tech.client;
        for s in [
            subject::up(&tn.account, &tn.devices[0].id, &[t("forged")]),
            subject::down(&tn.account, &tn.devices[0].id, &[t("cmd")]),
            format!("_INBOX.{}.forged", tn.devices[0].id),
            subject::up(&other.account, &other.devices[0].id, &[t("forged")]),
        ] {
            tc.publish(s, "x".into()).await.unwrap();
        }
        tc.flush().await.unwrap();
    }

    // Allowed paths, then markers.
    let mut expected_up = BTreeSet::new();
    for tn in &tenants {
        for d in &tn.devices {
            for k in ["ok", "marker"] {
                let s = subject::up(&tn.account, &d.id, &[Token::from_static(k)]);
                d.conn.client.publish(s.clone(), "x".into()).await.unwrap();
                expected_up.insert(s);
            }
            // Request/reply through the service import, answered on the device's own inbox.
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                d.conn
                    .client
                    .request(subject::up(&tn.account, &d.id, &[t("echo")]), "ping".into()),
            )
            .await
            .unwrap()
            .unwrap();
            assert_eq!(&reply.payload[..], b"ping");
            expected_up.insert(subject::up(&tn.account, &d.id, &[t("echo")]));
            for k in ["cmd", "marker"] {
                cp.publish(
                    subject::down(&tn.account, &d.id, &[Token::from_static(k)]),
                    "c".into(),
                )
                .await
                .unwrap();
            }
        }
    }
    cp.flush().await.unwrap();

    // Wait for every expected up message at the control plane.
    let mut got_up = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got_up.len() < expected_up.len() && tokio::time::Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), cp_up.recv()).await {
            got_up.insert(m.subject.to_string());
        }
    }
    settle().await;
    got_up.extend(drain(&mut cp_up));
    assert_eq!(
        got_up, expected_up,
        "the control plane saw exactly the allowed up messages"
    );

    let mut di = 0;
    for tn in &tenants {
        for d in &tn.devices {
            let got: BTreeSet<_> = drain(&mut own_down[di]).into_iter().collect();
            let want: BTreeSet<_> = ["cmd", "marker"]
                .iter()
                .map(|k| subject::down(&tn.account, &d.id, &[Token::from_static(k)]))
                .collect();
            assert_eq!(got, want, "device {} got exactly its own commands", d.id);
            di += 1;
        }
    }
    for (ti, tn) in tenants.iter().enumerate() {
        let got: BTreeSet<_> = drain(&mut tech_scope[ti]).into_iter().collect();
        let want: BTreeSet<_> = ["ok", "marker", "echo"]
            .iter()
            .map(|k| subject::up(&tn.account, &tn.devices[0].id, &[Token::from_static(k)]))
            .collect();
        assert_eq!(
            got, want,
            "technician {ti} sees exactly its in-scope device"
        );
    }
    for (what, rx) in forbidden.iter_mut() {
        let got = drain(rx);
        assert!(got.is_empty(), "{what} received {got:?}");
    }
    // The server said no, loudly: permission violations were reported to the offenders.
    for tn in &tenants {
        for d in &tn.devices {
            let errs = d.conn.events.server_errors();
            assert!(
                errs.iter()
                    .any(|e| e.contains("Permissions Violation for Publish")),
                "device {} got no publish violation: {errs:?}",
                d.id
            );
            assert!(
                errs.iter()
                    .any(|e| e.contains("Permissions Violation for Subscription")),
                "device {} got no subscription violation: {errs:?}",
                d.id
            );
        }
        let errs = tn.tech.events.server_errors();
        assert!(
            errs.iter()
                .any(|e| e.contains("Permissions Violation for Publish")),
            "{errs:?}"
        );
    }
}
