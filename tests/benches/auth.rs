//! Authentication benchmarks; they print their figures (see docs/BENCHMARKS.md).
//!
//! `cargo bench -p wegweiser-tests --bench auth` (add `-- --quick` for a short run)
//!
//! 1. Logins per second over HTTPS with argon2id at the default cost (m = 19 MiB, t = 2, p = 1),
//!    8 clients in parallel, and the time of one hash alone.
//! 2. The cost of authenticating a request: `GET /v1/auth/me` with a session cookie and with an
//!    API token over HTTPS (8 clients), and the session lookup alone (two KV reads) in process.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};
use wegweiser_cp::{
    rbac::{Binding, Scope},
    sessions::NewApiToken,
    users::{AuthConfig, Password},
};
use wegweiser_shared::secret::SecretString;
use wegweiser_tests::{Platform, PlatformOptions};

const PASSWORD: &str = "benchmark password 1234";

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

/// Runs `n` requests from `clients` parallel workers; returns requests per second.
async fn parallel<F, Fut>(n: usize, clients: usize, f: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u16> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (f, next) = (f.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                assert_eq!(f().await, 200);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn run(quick: bool) {
    let auth = AuthConfig {
        // Measure the hash, not the limits.
        login_rate_per_minute: 1_000_000,
        login_burst: 1_000_000,
        account_rate_per_minute: 1_000_000,
        account_burst: 1_000_000,
        ..AuthConfig::default()
    };
    let cost = format!(
        "m={} KiB, t={}, p={}",
        auth.argon2_memory_kib, auth.argon2_iterations, auth.argon2_parallelism
    );
    let p = Arc::new(
        Platform::start_with(PlatformOptions {
            auth: Some(auth),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let _tasks = p.serve().await.unwrap();
    let pw = Password::new(SecretString::new(PASSWORD.into())).unwrap();
    let admin = Binding {
        role: wegweiser_cp::rbac::Role::Admin,
        scope: Scope::Global,
    };
    let user = p
        .auth
        .create_user(&"bench".parse().unwrap(), &pw, vec![admin], "bench")
        .await
        .unwrap();

    // 1. One hash alone, then logins over HTTPS.
    let h = p.auth.hasher().clone();
    let rounds = if quick { 5 } else { 20 };
    let start = Instant::now();
    for _ in 0..rounds {
        h.hash(&pw).await.unwrap();
    }
    let one_hash = start.elapsed() / rounds;
    let n = if quick { 50 } else { 400 };
    let body =
        serde_json::to_vec(&serde_json::json!({"user": "bench", "password": PASSWORD})).unwrap();
    let pp = p.clone();
    let logins = parallel(n, 8, move || {
        let (p, body) = (pp.clone(), body.clone());
        async move {
            p.request("POST", "/v1/auth/login", &[], Some(body))
                .await
                .unwrap()
                .status
        }
    })
    .await;
    println!(
        "argon2id ({cost}): one hash {:.1} ms; logins over HTTPS (8 clients, {} cores): {logins:.0}/s",
        one_hash.as_secs_f64() * 1e3,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 2. Authenticated requests.
    let session = p.auth.create_session(&user, None).await.unwrap();
    let cookie = format!("wg_session={}", session.id.expose());
    let (token, _) = p
        .auth
        .create_api_token(
            NewApiToken {
                owner: user.name.clone(),
                label: String::new(),
                bindings: None,
                ttl_secs: 3600,
            },
            "bench",
        )
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token.expose());
    let n = if quick { 500 } else { 5000 };
    let (pp, c) = (p.clone(), cookie.clone());
    let by_cookie = parallel(n, 8, move || {
        let (p, c) = (pp.clone(), c.clone());
        async move {
            p.request("GET", "/v1/auth/me", &[("cookie", &c)], None)
                .await
                .unwrap()
                .status
        }
    })
    .await;
    let pp = p.clone();
    let by_token = parallel(n, 8, move || {
        let (p, b) = (pp.clone(), bearer.clone());
        async move {
            p.request("GET", "/v1/auth/me", &[("authorization", &b)], None)
                .await
                .unwrap()
                .status
        }
    })
    .await;
    let pp = p.clone();
    let healthz = parallel(n, 8, move || {
        let p = pp.clone();
        async move {
            p.request("GET", "/healthz", &[], None)
                .await
                .unwrap()
                .status
        }
    })
    .await;
    println!(
        "GET over HTTPS (8 clients, a new TLS connection each): /healthz {healthz:.0}/s, /v1/auth/me by session {by_cookie:.0}/s, by API token {by_token:.0}/s"
    );
    let id = session.id.expose().to_owned();
    let lookups = if quick { 1000 } else { 10_000 };
    let mut lat = Vec::with_capacity(lookups);
    let now = wegweiser_shared::time::now();
    for _ in 0..lookups {
        let t = Instant::now();
        assert!(p.auth.session(&id, now, true).await.unwrap().is_some());
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "session lookup in process (two KV reads, sequential): p50 {:.0} µs, p99 {:.0} µs",
        us(pct(0.5)),
        us(pct(0.99))
    );
}
