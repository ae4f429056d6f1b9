//! Credential authority benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench credential_authority`
//!
//! 1. Device JWTs issued per second on one core (build + sign, no I/O).
//! 2. Tenants created, pushed and verified per second against a real nats-server.
//! 3. Revoke-to-disconnect latency of a connected device.
#![allow(clippy::unwrap_used)]

use async_nats::Event;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use wegweiser_cp::{authority::NewTenant, tenant::TenantSigner};
use wegweiser_shared::ids::{DeviceId, UserKey};
use wegweiser_tests::Platform;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // One worker thread for the issuance figure, so it really is one core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(quick));
}

async fn run(quick: bool) {
    let p = Platform::start().await.unwrap();
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

    // 1. Issuance on one core.
    let (_, signer): (_, Arc<TenantSigner>) = p.auth.signer(&t.id).await.unwrap();
    let n = if quick { 20_000 } else { 200_000 };
    let users: Vec<UserKey> = (0..1000)
        .map(|_| nkeys::KeyPair::new_user().public_key().parse().unwrap())
        .collect();
    let devices: Vec<DeviceId> = (0..1000)
        .map(|i| format!("dev{i}").parse().unwrap())
        .collect();
    let issued = std::thread::spawn(move || {
        // Warm up.
        for i in 0..1000 {
            std::hint::black_box(signer.issue_device(&devices[i], &users[i], 86_400).unwrap());
        }
        let start = Instant::now();
        let mut bytes = 0usize;
        for i in 0..n {
            let j = i % 1000;
            bytes +=
                std::hint::black_box(signer.issue_device(&devices[j], &users[j], 86_400).unwrap())
                    .len();
        }
        (start.elapsed(), bytes / n)
    })
    .join()
    .unwrap();
    let rate = n as f64 / issued.0.as_secs_f64();
    println!(
        "device_jwt_issue: {n} JWTs in {:.3} s on one thread = {:.0}/s ({:.1} µs each, {} bytes each; target >= 40000/s)",
        issued.0.as_secs_f64(),
        rate,
        issued.0.as_secs_f64() * 1e6 / n as f64,
        issued.1
    );

    // 2. Tenant creation: sequential, then 8 in flight.
    let count = if quick { 50 } else { 300 };
    let start = Instant::now();
    for i in 0..count {
        p.auth
            .create_tenant(NewTenant {
                id: format!("seq-{i}").parse().unwrap(),
                name: None,
                limits: None,
                retention_days: None,
            })
            .await
            .unwrap();
    }
    let seq = start.elapsed();
    println!(
        "tenant_create_sequential: {count} tenants created, pushed and verified in {:.3} s = {:.0}/s (target >= 100/s)",
        seq.as_secs_f64(),
        count as f64 / seq.as_secs_f64()
    );
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let (auth, next) = (p.auth.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                auth.create_tenant(NewTenant {
                    id: format!("par-{i}").parse().unwrap(),
                    name: None,
                    limits: None,
                    retention_days: None,
                })
                .await
                .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let par = start.elapsed();
    println!(
        "tenant_create_concurrent8: {count} tenants in {:.3} s = {:.0}/s",
        par.as_secs_f64(),
        count as f64 / par.as_secs_f64()
    );

    // 3. Revoke-to-disconnect latency.
    let victims = if quick { 20 } else { 100 };
    let mut conns = Vec::new();
    for i in 0..victims {
        let dev: DeviceId = format!("victim{i}").parse().unwrap();
        let kp = Arc::new(nkeys::KeyPair::new_user());
        let user: UserKey = kp.public_key().parse().unwrap();
        let jwt = p
            .auth
            .issue_device_jwt(&t.id, &dev, &user, Some(3600))
            .await
            .unwrap();
        conns.push((
            p.connect_user(jwt.jwt, kp, dev.as_str()).await.unwrap(),
            user,
        ));
    }
    let mut lat = Vec::new();
    for (conn, user) in &conns {
        let start = Instant::now();
        p.auth.revoke(&t.id, user).await.unwrap();
        assert!(
            conn.events
                .wait_for(Duration::from_secs(5), |e| matches!(e, Event::Disconnected))
                .await
        );
        lat.push(start.elapsed());
    }
    lat.sort();
    println!(
        "revoke_to_disconnect: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms (target p99 <= 1000 ms)",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    let rec = p.auth.tenant(&t.id).await.unwrap();
    println!(
        "account_jwt_size: {} bytes with {} revocations",
        rec.jwt.len(),
        rec.revocations.len()
    );
}
