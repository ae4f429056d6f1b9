//! Enrollment and renewal benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench enrollment` (add `-- --quick` for a short run)
//!
//! 1. Enrollments per second end to end over HTTPS (16 clients in parallel).
//! 2. Renewals per second over NATS (64 devices renewing in parallel).
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::Instant,
};
use wegweiser_cp::{authority::NewTenant, config::EnrollmentConfig, enrollment::NewToken};
use wegweiser_shared::{
    enroll::{RenewRequest, RenewResponse},
    ids::DeviceId,
    subject::{self, Token},
};
use wegweiser_tests::{Platform, PlatformOptions};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let p = Arc::new(
        Platform::start_with(PlatformOptions {
            enrollment: Some(EnrollmentConfig {
                allow: vec!["127.0.0.0/8".parse().unwrap()],
                ..Default::default()
            }),
            // Each device renews many times in a row here.
            renew_min_interval: Some(0),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let t = p
        .auth
        .create_tenant(NewTenant {
            id: "bench".parse().unwrap(),
            name: None,
            limits: None,
            retention_days: None,
        })
        .await
        .unwrap();
    let _tasks = p.serve().await.unwrap();

    // 1. Enrollments over HTTPS.
    let n = if quick { 200 } else { 2000 };
    let (token, _) = p
        .auth
        .create_token(NewToken {
            tenant: t.id.clone(),
            organization: None,
            group: None,
            ttl_secs: None,
            max_uses: Some(n as u32),
            label: "bench".into(),
        })
        .await
        .unwrap();
    let token = token.expose().to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    let enrolled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    for _ in 0..16 {
        let (p, token, next, enrolled) = (p.clone(), token.clone(), next.clone(), enrolled.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let kp = nkeys::KeyPair::new_user();
                let facts = wegweiser_shared::enroll::DeviceFacts {
                    hostname: format!("h{i}"),
                    os: "linux".into(),
                    os_version: String::new(),
                    arch: String::new(),
                    machine_id: format!("bench-{i}"),
                    agent_version: String::new(),
                };
                let body = wegweiser_tests::enroll_body(&token, &kp, &facts, None);
                let (status, v) = p.post_enroll(body).await.unwrap();
                assert_eq!(status, 200, "{v}");
                enrolled.lock().unwrap().push((
                    v["device_id"]
                        .as_str()
                        .unwrap()
                        .parse::<DeviceId>()
                        .unwrap(),
                    v["jwt"].as_str().unwrap().to_owned(),
                    Arc::new(kp),
                ));
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let took = start.elapsed();
    println!(
        "enroll_https: {n} enrollments in {:.2} s = {:.0}/s (16 parallel HTTPS clients, new TLS connection each; target >= 300/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );

    // 2. Renewals over NATS.
    let devices: Vec<_> = enrolled.lock().unwrap().iter().take(64).cloned().collect();
    let per = if quick { 50 } else { 200 };
    let mut conns = Vec::new();
    for (d, jwt, kp) in &devices {
        conns.push((
            d.clone(),
            p.connect_user(jwt.clone(), kp.clone(), d.as_str())
                .await
                .unwrap(),
        ));
    }
    let account = t.account.clone();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (d, c) in conns {
        let account = account.clone();
        tasks.push(tokio::spawn(async move {
            let subj = subject::up(&account, &d, &[Token::from_static("renew")]);
            let body = serde_json::to_vec(&RenewRequest::default()).unwrap();
            for _ in 0..per {
                let r = c
                    .client
                    .request(subj.clone(), body.clone().into())
                    .await
                    .unwrap();
                let r: RenewResponse = serde_json::from_slice(&r.payload).unwrap();
                assert!(matches!(r, RenewResponse::Ok { .. }), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    let total = per * devices.len();
    println!(
        "renew_nats: {total} renewals in {:.2} s = {:.0}/s ({} devices in parallel; target >= 3000/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        devices.len()
    );
}
