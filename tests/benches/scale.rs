//! Scale benchmark: one nats-server, the control plane as its own `wegweiser serve` process, and
//! `wegweiser-sim` with N agents (10,000 by default) enrolled over HTTPS and reporting on real
//! NATS connections. Measures the time to enroll and connect them all, the time until the control
//! plane's API counts all of them online, the device list API's latency over HTTPS (first page, a
//! filtered page, a deep page; target p99 ≤ 50 ms), the dashboard's page load when `/app/` is
//! served, and the memory and CPU of nats-server, the control plane and the simulator in a steady
//! state.
//!
//! Needs the release binaries: `cargo build --release -p wegweiser-control-plane -p
//! wegweiser-sim`, then `cargo bench -p wegweiser-tests --bench scale`. Environment:
//! `SCALE_AGENTS` (10000), `SCALE_CONCURRENCY` (32), `SCALE_STEADY_SECS` (60),
//! `SCALE_HEARTBEAT` (30s), `SCALE_SAMPLES` (200 requests per list kind).
#![allow(clippy::unwrap_used)]

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use wegweiser_cp::{
    authority::NewTenant,
    config::{EnrollmentConfig, TenantLimits},
    enrollment::NewToken,
    rbac::{Binding, Role, Scope},
    sessions::NewApiToken,
    users::{AuthConfig, Password},
};
use wegweiser_shared::secret::SecretString;
use wegweiser_sim::{cpu_secs, rss_mib};
use wegweiser_tests::{Platform, PlatformOptions};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A release binary next to this benchmark (`target/release/<name>`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p wegweiser-control-plane -p wegweiser-sim` first",
        bin.display()
    );
    bin
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resource use of one process over a window.
struct Usage {
    name: &'static str,
    pid: String,
    cpu0: f64,
    rss_max: f64,
}

impl Usage {
    fn new(name: &'static str, pid: u32) -> Self {
        let pid = pid.to_string();
        Self {
            name,
            cpu0: cpu_secs(&pid).unwrap_or(0.0),
            rss_max: rss_mib(&pid).unwrap_or(0.0),
            pid,
        }
    }

    fn sample(&mut self) {
        self.rss_max = self.rss_max.max(rss_mib(&self.pid).unwrap_or(0.0));
    }

    fn report(&self, secs: f64) -> String {
        let cpu = (cpu_secs(&self.pid).unwrap_or(0.0) - self.cpu0) / secs * 100.0;
        let rss = rss_mib(&self.pid).unwrap_or(0.0);
        format!(
            "{:<14} rss {:>7.0} MiB (max {:>7.0})  cpu {:>5.1}% of one core",
            self.name, rss, self.rss_max, cpu
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `GET path` with the bearer token; status, body, milliseconds.
fn get(agent: &ureq::Agent, base: &str, token: &str, path: &str) -> (u16, serde_json::Value, f64) {
    let t = Instant::now();
    let mut r = agent
        .get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body, ms)
}

/// Devices the API counts online (all pages of `online=true`).
fn online_count(agent: &ureq::Agent, base: &str, token: &str, tenant: &str) -> usize {
    let mut n = 0;
    let mut after = String::new();
    loop {
        let path = format!("/v1/tenants/{tenant}/devices?online=true&limit=500{after}");
        let (status, body, _) = get(agent, base, token, &path);
        assert_eq!(status, 200, "{body}");
        n += body["items"].as_array().map_or(0, Vec::len);
        match body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return n,
        }
    }
}

fn main() {
    let n: usize = env("SCALE_AGENTS", 10_000);
    let concurrency: usize = env("SCALE_CONCURRENCY", 32);
    let steady: u64 = env("SCALE_STEADY_SECS", 60);
    let heartbeat: String = env("SCALE_HEARTBEAT", "30s".to_owned());
    let samples: usize = env("SCALE_SAMPLES", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (serve_bin, sim_bin) = (binary("wegweiser"), binary("wegweiser-sim"));

    // Platform: nats-server, data directory; the simulator's address allowlisted for enrollment.
    let p = rt
        .block_on(Platform::start_with(PlatformOptions {
            enrollment: Some(EnrollmentConfig {
                allow: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                ..EnrollmentConfig::default()
            }),
            auth: Some(AuthConfig {
                argon2_memory_kib: 1024,
                argon2_iterations: 1,
                ..AuthConfig::default()
            }),
            ..Default::default()
        }))
        .unwrap();
    let nats_pid = p.server.as_ref().unwrap().pid();
    let tenant = rt
        .block_on(p.auth.create_tenant(NewTenant {
            id: "scale".parse().unwrap(),
            name: None,
            limits: Some(TenantLimits {
                max_connections: (n as i64) * 2 + 100,
                ..TenantLimits::default()
            }),
            retention_days: None,
        }))
        .unwrap();
    rt.block_on(p.place(&tenant.id, "o1", Some("g1"))).unwrap();
    let (enroll_token, _) = rt
        .block_on(p.auth.create_token(NewToken {
            tenant: tenant.id.clone(),
            organization: Some("o1".into()),
            group: Some("g1".into()),
            ttl_secs: None,
            max_uses: Some(n as u32),
            label: "scale".into(),
        }))
        .unwrap();
    let viewer: wegweiser_shared::ids::UserName = "bench".parse().unwrap();
    rt.block_on(p.auth.create_user(
        &viewer,
        &Password::new(SecretString::new("correct horse battery staple".into())).unwrap(),
        vec![Binding {
            role: Role::Viewer,
            scope: Scope::Tenant {
                tenant: tenant.id.clone(),
            },
        }],
        "bench",
    ))
    .unwrap();
    let (api, _) = rt
        .block_on(p.auth.create_api_token(
            NewApiToken {
                owner: viewer,
                label: String::new(),
                bindings: None,
                ttl_secs: 3600,
            },
            "bench",
        ))
        .unwrap();
    let api = api.expose().to_owned();

    // The control plane as a process of its own.
    let log = std::fs::File::create(p.dir.path().join("serve.log")).unwrap();
    let serve = Proc(
        Command::new(&serve_bin)
            .arg("--data-dir")
            .arg(p.data_dir())
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = p.https_url();
    let http = p.https();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("{base}/healthz"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "wegweiser serve did not become healthy; see {}",
            p.dir.path().join("serve.log").display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("scale: {n} agents, concurrency {concurrency}, heartbeat {heartbeat}");

    // The simulator.
    let started = Instant::now();
    let mut sim = Proc(
        Command::new(&sim_bin)
            .args(["--url", &base, "--ca"])
            .arg(&p.ca)
            .args(["--count", &n.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--heartbeat", &heartbeat, "--metrics", "60s"])
            .args(["--progress", "2s", "--json", "--prefix", "sim"])
            .env("WEGWEISER_SIM_TOKEN", enroll_token.expose())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let sim_pid = sim.0.id();
    let last: Arc<Mutex<serde_json::Value>> = Arc::default();
    let enrolled_at: Arc<Mutex<Option<f64>>> = Arc::default();
    {
        let (out, last, enrolled_at) = (
            sim.0.stdout.take().unwrap(),
            last.clone(),
            enrolled_at.clone(),
        );
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["enrolled"].as_u64() == Some(n as u64) {
                        enrolled_at
                            .lock()
                            .unwrap()
                            .get_or_insert(v["elapsed_s"].as_f64().unwrap_or(0.0));
                    }
                    *last.lock().unwrap() = v;
                }
            }
        });
    }
    let limit = Duration::from_secs(env("SCALE_CONNECT_TIMEOUT_SECS", 1800));
    let connected_s = loop {
        let v = last.lock().unwrap().clone();
        if let Some(s) = v["all_connected_s"].as_f64() {
            break s;
        }
        if let Ok(Some(status)) = sim.0.try_wait() {
            panic!("the simulator exited ({status}) at {v}");
        }
        assert!(
            started.elapsed() < limit,
            "not all agents connected within {limit:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let enrolled_s = enrolled_at.lock().unwrap().unwrap_or(connected_s);
    let v = last.lock().unwrap().clone();
    println!(
        "enroll + connect: all {n} enrolled after {enrolled_s:.1} s ({:.0}/s), all connected after {connected_s:.1} s",
        n as f64 / enrolled_s.max(1e-3)
    );
    println!("simulator: {v}");

    // Presence: the control plane's API counts every agent online.
    let presence_start = Instant::now();
    let tid = tenant.id.to_string();
    let online = loop {
        let c = online_count(&http, &base, &api, &tid);
        if c >= n
            || presence_start.elapsed()
                > Duration::from_secs(env("SCALE_PRESENCE_TIMEOUT_SECS", 300))
        {
            break c;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    if online < n {
        let log = std::fs::read_to_string(p.dir.path().join("serve.log")).unwrap_or_default();
        println!(
            "control plane log:\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
    }
    println!(
        "presence: API counts {online} of {n} online, {:.1} s after all connected ({:.1} s after the start)",
        presence_start.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Steady state: resources of the three processes.
    let mut usage = [
        Usage::new("nats-server", nats_pid),
        Usage::new("control plane", serve.0.id()),
        Usage::new("simulator", sim_pid),
    ];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(steady) {
        std::thread::sleep(Duration::from_secs(2));
        usage.iter_mut().for_each(Usage::sample);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("steady state over {secs:.0} s with {n} agents connected:");
    for u in &usage {
        println!("  {}", u.report(secs));
    }
    println!("simulator: {}", last.lock().unwrap());

    // Device list latency over HTTPS (one keep-alive connection, sequential).
    let (_, mid, _) = get(
        &http,
        &base,
        &api,
        &format!("/v1/tenants/{tid}/devices?limit=500"),
    );
    let mut deep_after = mid["next"].as_str().unwrap_or_default().to_owned();
    for _ in 0..(n / 500 / 2).saturating_sub(1) {
        let (_, page, _) = get(
            &http,
            &base,
            &api,
            &format!("/v1/tenants/{tid}/devices?limit=500&after={deep_after}"),
        );
        match page["next"].as_str() {
            Some(next) => deep_after = next.to_owned(),
            None => break,
        }
    }
    let kinds = [
        ("first page (100)", format!("/v1/tenants/{tid}/devices")),
        (
            "filtered (online, one host name)",
            format!("/v1/tenants/{tid}/devices?online=true&q=sim-{:06}", n / 2),
        ),
        (
            "deep page (100 after the middle)",
            format!("/v1/tenants/{tid}/devices?after={deep_after}"),
        ),
    ];
    println!("device list API over HTTPS, {samples} requests each (target p99 ≤ 50 ms):");
    let mut worst_p99: f64 = 0.0;
    for (name, path) in &kinds {
        let mut ms = Vec::with_capacity(samples);
        for _ in 0..samples {
            let (status, body, t) = get(&http, &base, &api, path);
            assert_eq!(status, 200, "{body}");
            assert!(
                n < 1200 || !body["items"].as_array().unwrap().is_empty(),
                "{name}: empty"
            );
            ms.push(t);
        }
        ms.sort_by(f64::total_cmp);
        let p99 = percentile(&ms, 0.99);
        worst_p99 = worst_p99.max(p99);
        println!(
            "  {name:<34} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms",
            percentile(&ms, 0.5),
            p99,
            ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  worst p99 {worst_p99:.1} ms: {}",
        if worst_p99 <= 50.0 {
            "within the 50 ms target"
        } else {
            "OVER the 50 ms target"
        }
    );

    // The dashboard's device list page, when this build serves one.
    let t = Instant::now();
    let mut r = http.get(format!("{base}/app/")).call().unwrap();
    if r.status().as_u16() == 200 {
        let html = r.body_mut().read_to_string().unwrap_or_default();
        let mut assets = Vec::new();
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                if url.starts_with("/app/") {
                    assets.push(url.to_owned());
                }
            }
        }
        for a in &assets {
            let _ = http
                .get(format!("{base}{a}"))
                .call()
                .map(|mut r| r.body_mut().read_to_vec());
        }
        let (status, _, _) = get(&http, &base, &api, &kinds[0].1);
        println!(
            "device list page: /app/, {} assets and the first list call in {:.0} ms (status {status}; target ≤ 1000 ms)",
            assets.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    } else {
        println!(
            "device list page: not measured (/app/ answers {}); the first list call above stands for it",
            r.status()
        );
    }
    drop(sim);
    drop(serve);
}
