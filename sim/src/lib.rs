//! The Wegweiser load simulator: enrolls N simulated agents through the real HTTPS enrollment
//! path, then keeps N real NATS connections (TLS, each with its own device key and JWT) sending
//! heartbeats, metrics and one inventory each, with jitter, renewing their credentials as the
//! agent does. It prints progress: enrollment rate, connected count, reports sent and failed,
//! and its own memory and CPU.
//!
//! ```text
//! wegweiser-sim --url https://cp.example.net:8443 --ca ca.pem --token wgt_… --count 10000 \
//!     --concurrency 32 --heartbeat 30s --metrics 60s
//! ```
//!
//! One enrollment token with `max_uses` ≥ N serves every device. Enrollment is rate-limited and
//! blocked per address: allowlist the simulator's address in the control plane's
//! `[enrollment] allow` list. Every connection is a file descriptor: raise `ulimit -n` above N.

use anyhow::Context;
use async_nats::{ConnectOptions, HeaderMap};
use futures::StreamExt;
use rand::Rng;
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use wegweiser_shared::{
    enroll::{
        DeviceFacts, ENROLL_PATH, EnrollRequest, EnrollResponse, RENEW_TOKEN, RenewRequest,
        RenewResponse, enroll_proof_message, sign_proof,
    },
    ids::{AccountKey, DeviceId},
    subject::{self, Token},
    telemetry::{Heartbeat, Inventory, Kind, Metrics, TELEMETRY_TOKEN, message_id},
    time::now,
};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Control plane base URL (`https://host:8443`).
    pub url: String,
    /// CA certificate (PEM) of the HTTPS server, and of nats-server unless `nats_ca` is given.
    pub ca: PathBuf,
    /// CA certificate (PEM) of nats-server.
    pub nats_ca: Option<PathBuf>,
    /// Enrollment token (`max_uses` ≥ `count`).
    pub token: String,
    /// How many agents.
    pub count: usize,
    /// Enrollments and connects in flight at once.
    pub concurrency: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Metrics interval.
    pub metrics: Duration,
    /// NATS URL (default: the first of the enrollment answer).
    pub nats: Option<String>,
    /// Machine name prefix (machine ids are `<prefix>-<i>`).
    pub prefix: String,
    /// Stop after this long (default: at Ctrl-C).
    pub duration: Option<Duration>,
    /// Progress every this often.
    pub progress: Duration,
    /// Progress as JSON lines.
    pub json: bool,
}

/// Counters shared by every simulated agent.
#[derive(Debug, Default)]
pub struct Stats {
    /// Enrolled.
    pub enrolled: AtomicU64,
    /// Enrollment attempts that failed (after retries).
    pub enroll_failed: AtomicU64,
    /// Connected now.
    pub connected: AtomicU64,
    /// Connections that could not be made.
    pub connect_failed: AtomicU64,
    /// Disconnections seen.
    pub disconnects: AtomicU64,
    /// Reports acknowledged.
    pub reports_ok: AtomicU64,
    /// Reports not acknowledged.
    pub reports_failed: AtomicU64,
    /// Renewals done.
    pub renewals: AtomicU64,
    /// Renewals that failed.
    pub renew_failed: AtomicU64,
    /// Rate-limit answers met during enrollment.
    pub rate_limited: AtomicU64,
}

/// One progress sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Enrolled so far.
    pub enrolled: u64,
    /// Enrollments per second since the start (while enrolling).
    pub enroll_rate: f64,
    /// Enrollments that failed.
    pub enroll_failed: u64,
    /// Connected now.
    pub connected: u64,
    /// Connections that could not be made.
    pub connect_failed: u64,
    /// Disconnections seen.
    pub disconnects: u64,
    /// Reports acknowledged.
    pub reports_ok: u64,
    /// Reports not acknowledged.
    pub reports_failed: u64,
    /// Renewals done.
    pub renewals: u64,
    /// Renewals failed.
    pub renew_failed: u64,
    /// Seconds until every agent was connected (once they are).
    pub all_connected_s: Option<f64>,
    /// Own resident memory, MiB.
    pub rss_mib: f64,
    /// Own CPU since the previous sample, percent of one core.
    pub cpu_pct: f64,
}

/// Resident set size of process `pid` (`self` for this one), MiB.
pub fn rss_mib(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU time (user + system) of process `pid` so far, seconds (Linux clock ticks of 1/100 s).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

/// An HTTPS client trusting only `ca`.
fn https(ca: &std::path::Path) -> anyhow::Result<ureq::Agent> {
    let pem = std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        !certs.is_empty(),
        "--ca {} holds no PEM certificate",
        ca.display()
    );
    Ok(ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_idle_connections_per_host(256)
        .build()
        .into())
}

/// Facts of simulated machine `machine`.
pub fn facts(machine: &str) -> DeviceFacts {
    DeviceFacts {
        hostname: machine.into(),
        os: "linux".into(),
        os_version: "sim".into(),
        arch: "x86_64".into(),
        machine_id: machine.into(),
        agent_version: "sim".into(),
    }
}

enum Enrolled {
    Ok(Box<EnrollResponse>),
    /// Rate-limited: retry after this many seconds.
    Limited(u64),
}

/// Enrolls one machine (blocking).
fn enroll(
    http: &ureq::Agent,
    opts: &Options,
    kp: &nkeys::KeyPair,
    machine: &str,
) -> anyhow::Result<Enrolled> {
    let public_key = kp.public_key().parse()?;
    let facts = facts(machine);
    let proof = sign_proof(
        kp,
        &enroll_proof_message(&opts.token, &facts.machine_id, &public_key),
    )
    .context("cannot sign the enrollment proof")?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: opts.token.clone(),
        public_key,
        proof,
        current: None,
        facts,
    })?;
    let url = format!("{}{ENROLL_PATH}", opts.url.trim_end_matches('/'));
    let mut r = http
        .post(&url)
        .header("content-type", "application/json")
        .send(&body[..])
        .with_context(|| format!("cannot reach {url}"))?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let text = r.body_mut().read_to_string().unwrap_or_default();
    match status {
        200 => Ok(Enrolled::Ok(Box::new(
            serde_json::from_str(&text)
                .context("the enrollment answer is not an EnrollResponse")?,
        ))),
        429 => Ok(Enrolled::Limited(retry)),
        403 if text.contains("address_") => anyhow::bail!(
            "enrollment refused for this address ({text}); add the simulator's address to \
             [enrollment] allow in the control plane's wegweiser.toml and restart it"
        ),
        _ => anyhow::bail!("enrollment failed with {status}: {text}"),
    }
}

/// A connected simulated agent.
struct Agent {
    device: DeviceId,
    account: AccountKey,
    client: async_nats::Client,
    jwt: Arc<Mutex<String>>,
    jwt_expires_at: i64,
    issued_at: i64,
    seq: u64,
}

async fn connect(
    opts: &Options,
    nats_url: &str,
    r: &EnrollResponse,
    kp: Arc<nkeys::KeyPair>,
    stats: &Arc<Stats>,
) -> Result<Agent, async_nats::ConnectError> {
    let jwt = Arc::new(Mutex::new(r.jwt.clone()));
    let (cb_jwt, ev_stats) = (jwt.clone(), stats.clone());
    // Counted once per connection, however the client reports its (re)connections.
    let up = Arc::new(AtomicBool::new(false));
    let client = ConnectOptions::with_auth_callback(move |nonce| {
        let kp = kp.clone();
        let jwt = cb_jwt.lock().map(|g| g.clone()).unwrap_or_default();
        async move {
            let mut auth = async_nats::Auth::new();
            auth.jwt = Some(jwt);
            auth.signature = Some(
                kp.sign(&nonce)
                    .map_err(|e| async_nats::AuthError::new(e.to_string()))?,
            );
            Ok(auth)
        }
    })
    .custom_inbox_prefix(subject::inbox_prefix(r.device_id.as_str()))
    .add_root_certificates(opts.nats_ca.clone().unwrap_or_else(|| opts.ca.clone()))
    .require_tls(true)
    .read_buffer_capacity(8 * 1024)
    .connection_timeout(Duration::from_secs(20))
    .request_timeout(Some(Duration::from_secs(20)))
    // The agent's own schedule: async-nats asks before the very first attempt too (attempt 1),
    // so a first connection waits at most 250 ms, and reconnects after an outage spread out.
    .reconnect_delay_callback(|attempt| {
        wegweiser_agent::schedule::reconnect_delay(attempt, &mut rand::thread_rng())
    })
    .event_callback(move |e| {
        let (s, up) = (ev_stats.clone(), up.clone());
        async move {
            match e {
                async_nats::Event::Disconnected => {
                    s.disconnects.fetch_add(1, Relaxed);
                    if up.swap(false, Relaxed) {
                        s.connected.fetch_sub(1, Relaxed);
                    }
                }
                async_nats::Event::Connected if !up.swap(true, Relaxed) => {
                    s.connected.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
    })
    .connect(nats_url)
    .await?;
    Ok(Agent {
        device: r.device_id.clone(),
        account: r.account.clone(),
        client,
        jwt,
        jwt_expires_at: r.jwt_expires_at,
        issued_at: now(),
        seq: 0,
    })
}

impl Agent {
    fn up(&self, kind: Kind) -> String {
        subject::up(
            &self.account,
            &self.device,
            &[
                Token::from_static(TELEMETRY_TOKEN),
                Token::from_static(kind.token()),
            ],
        )
    }

    /// Sends a report as the agent does: a request with a message id, acknowledged by the
    /// telemetry stream.
    async fn report<T: serde::Serialize>(&mut self, kind: Kind, body: &T, stats: &Stats) {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", message_id(&self.device, self.seq).as_str());
        let ok = match serde_json::to_vec(body) {
            Ok(payload) => matches!(
                self.client
                    .request_with_headers(self.up(kind), h, payload.into())
                    .await,
                Ok(ack) if !ack.payload.windows(7).any(|w| w == b"\"error\"")
            ),
            Err(_) => false,
        };
        let c = if ok {
            &stats.reports_ok
        } else {
            &stats.reports_failed
        };
        c.fetch_add(1, Relaxed);
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn heartbeat(&mut self, stats: &Stats) {
        let hb = Heartbeat {
            v: 1,
            seq: self.next_seq(),
            ts: now(),
            agent_version: "sim".into(),
            jwt_expires_at: self.jwt_expires_at,
            spool_depth: 0,
            keyset_version: None,
            commands_rejected: 0,
        };
        self.report(Kind::Heartbeat, &hb, stats).await;
    }

    async fn metrics(&mut self, stats: &Stats) {
        let seq = self.next_seq();
        let m = {
            let mut rng = rand::thread_rng();
            Metrics {
                v: 1,
                seq,
                ts: now(),
                cpu: rng.gen_range(0.0..100.0),
                cpu_per_core: vec![rng.gen_range(0.0..100.0); 2],
                load: Some([0.5, 0.4, 0.3]),
                memory_used: rng.gen_range(1 << 30..4 << 30),
                memory_available: 4 << 30,
                swap_used: 0,
                disks: Vec::new(),
                network: Vec::new(),
                process_count: rng.gen_range(80..300),
                top_cpu: Vec::new(),
                top_memory: Vec::new(),
                uptime: 3600,
            }
        };
        self.report(Kind::Metrics, &m, stats).await;
    }

    async fn inventory(&mut self, stats: &Stats) {
        let inv = Inventory {
            v: 1,
            seq: self.next_seq(),
            ts: now(),
            hostname: self.device.to_string(),
            os: "linux".into(),
            os_version: "sim".into(),
            kernel: "6.1.0-sim".into(),
            arch: "x86_64".into(),
            machine_id: self.device.to_string(),
            boot_time: now() - 3600,
            cpu_model: "Simulated CPU".into(),
            cpu_cores: 2,
            cpu_mhz: 2400,
            memory_total: 8 << 30,
            swap_total: 0,
            disks: Vec::new(),
            interfaces: Vec::new(),
            software: Vec::new(),
            agent_version: "sim".into(),
        };
        self.report(Kind::Inventory, &inv, stats).await;
    }

    /// Renews the JWT over NATS and reconnects with it, as the agent does.
    async fn renew(&mut self, stats: &Stats) {
        let subject = subject::up(
            &self.account,
            &self.device,
            &[Token::from_static(RENEW_TOKEN)],
        );
        let payload = serde_json::to_vec(&RenewRequest { new_key: None }).unwrap_or_default();
        let answer = self.client.request(subject, payload.into()).await;
        match answer
            .ok()
            .and_then(|a| serde_json::from_slice::<RenewResponse>(&a.payload).ok())
        {
            Some(RenewResponse::Ok { jwt, expires_at }) => {
                if let Ok(mut g) = self.jwt.lock() {
                    *g = jwt;
                }
                self.issued_at = now();
                self.jwt_expires_at = expires_at;
                stats.renewals.fetch_add(1, Relaxed);
                let _ = self.client.force_reconnect().await;
            }
            _ => {
                stats.renew_failed.fetch_add(1, Relaxed);
                // Try again in a minute.
                self.issued_at += 60;
            }
        }
    }

    /// When to renew: two thirds into the JWT's life.
    fn renew_at(&self) -> i64 {
        self.issued_at + (self.jwt_expires_at - self.issued_at) * 2 / 3
    }

    /// Reports until `stop` is set.
    async fn run(mut self, opts: Arc<Options>, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
        let mut down = self
            .client
            .subscribe(subject::down_all(&self.account, &self.device))
            .await
            .ok();
        self.inventory(&stats).await;
        let jitter = |d: Duration| {
            let ms = d.as_millis() as u64;
            Duration::from_millis(rand::thread_rng().gen_range(ms * 9 / 10..=ms * 11 / 10))
        };
        let first = |d: Duration| {
            Duration::from_millis(rand::thread_rng().gen_range(0..=d.as_millis() as u64))
        };
        let mut next_hb = tokio::time::Instant::now() + first(opts.heartbeat);
        let mut next_met = tokio::time::Instant::now() + first(opts.metrics);
        while !stop.load(Relaxed) {
            let wake = next_hb.min(next_met);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                Some(_) = async {
                    match down.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => continue,
            }
            let t = tokio::time::Instant::now();
            if t >= next_hb {
                self.heartbeat(&stats).await;
                next_hb = t + jitter(opts.heartbeat);
            }
            if t >= next_met {
                self.metrics(&stats).await;
                next_met = t + jitter(opts.metrics);
            }
            if now() >= self.renew_at() {
                self.renew(&stats).await;
            }
        }
        let _ = self.client.drain().await;
    }
}

/// Runs the simulation: enrolls and connects every agent, reports progress through
/// `on_progress`, and returns once `opts.duration` has passed (or at Ctrl-C).
pub async fn run(
    opts: Options,
    mut on_progress: impl FnMut(&Progress) + Send,
) -> anyhow::Result<Progress> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    anyhow::ensure!(opts.count > 0, "--count must be at least 1");
    let need = opts.count as u64 + 64;
    if let Some(limit) = open_files_limit()
        && limit < need
    {
        anyhow::bail!(
            "{} connections need about {need} open files, but the limit is {limit}; raise it \
             first (e.g. `ulimit -n {}`) or lower --count",
            opts.count,
            need.next_power_of_two().max(65536)
        );
    }
    let http = https(&opts.ca)?;
    let opts = Arc::new(opts);
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let nats_url: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(opts.nats.clone()));
    let hinted = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.max(1) {
        let (opts, stats, stop, next, http, nats_url, hinted) = (
            opts.clone(),
            stats.clone(),
            stop.clone(),
            next.clone(),
            http.clone(),
            nats_url.clone(),
            hinted.clone(),
        );
        workers.spawn(async move {
            let mut agents = tokio::task::JoinSet::new();
            loop {
                let i = next.fetch_add(1, Relaxed) as usize;
                if i >= opts.count || stop.load(Relaxed) {
                    break;
                }
                let kp = Arc::new(nkeys::KeyPair::new_user());
                let machine = format!("{}-{i:06}", opts.prefix);
                let response = loop {
                    let (h, o, k, m) = (http.clone(), opts.clone(), kp.clone(), machine.clone());
                    match tokio::task::spawn_blocking(move || enroll(&h, &o, &k, &m)).await? {
                        Ok(Enrolled::Ok(r)) => break r,
                        Ok(Enrolled::Limited(secs)) => {
                            stats.rate_limited.fetch_add(1, Relaxed);
                            if !hinted.swap(true, Relaxed) {
                                eprintln!(
                                    "Enrollment is rate-limited for this address; waiting and retrying. \
                                     Add the simulator's address to [enrollment] allow in wegweiser.toml \
                                     to enroll at full speed."
                                );
                            }
                            tokio::time::sleep(Duration::from_secs(secs.clamp(1, 60))).await;
                        }
                        Err(e) => {
                            stats.enroll_failed.fetch_add(1, Relaxed);
                            return Err(e.context(format!("enrolling {machine}")));
                        }
                    }
                };
                stats.enrolled.fetch_add(1, Relaxed);
                let url = {
                    let mut g = nats_url.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    g.get_or_insert_with(|| response.nats_urls.first().cloned().unwrap_or_default())
                        .clone()
                };
                let mut attempt = 0;
                let agent = loop {
                    match connect(&opts, &url, &response, kp.clone(), &stats).await {
                        Ok(a) => break Some(a),
                        Err(e) => {
                            attempt += 1;
                            let text = e.to_string();
                            if text.contains("Too many open files") {
                                anyhow::bail!(
                                    "out of file descriptors after {} connections; raise `ulimit -n`",
                                    stats.connected.load(Relaxed)
                                );
                            }
                            if attempt >= 5 {
                                stats.connect_failed.fetch_add(1, Relaxed);
                                eprintln!("Cannot connect {}: {text}", response.device_id);
                                break None;
                            }
                            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                        }
                    }
                };
                if let Some(a) = agent {
                    agents.spawn(a.run(opts.clone(), stats.clone(), stop.clone()));
                }
            }
            while agents.join_next().await.is_some() {}
            Ok::<(), anyhow::Error>(())
        });
    }

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut all_connected: Option<f64> = None;
    let mut enrolled_at: Option<f64> = None;
    let mut last_cpu = (Instant::now(), cpu_secs("self").unwrap_or(0.0));
    let mut ticker = tokio::time::interval(opts.progress);
    let mut failure = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            Some(r) = workers.join_next() => {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { failure = Some(e); break; }
                    Err(e) => { failure = Some(e.into()); break; }
                }
                continue;
            }
        }
        let p = sample(&stats, started, &mut last_cpu, &mut enrolled_at, opts.count);
        if all_connected.is_none()
            && p.enrolled >= opts.count as u64
            && p.connected >= opts.count as u64
        {
            all_connected = Some(p.elapsed_s);
        }
        let p = Progress {
            all_connected_s: all_connected,
            ..p
        };
        on_progress(&p);
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    stop.store(true, Relaxed);
    let p = Progress {
        all_connected_s: all_connected,
        ..sample(&stats, started, &mut last_cpu, &mut enrolled_at, opts.count)
    };
    // Agents wake at their next report and drain; don't wait for them all.
    workers.abort_all();
    match failure {
        Some(e) => Err(e),
        None => Ok(p),
    }
}

fn sample(
    stats: &Stats,
    started: Instant,
    last_cpu: &mut (Instant, f64),
    enrolled_at: &mut Option<f64>,
    count: usize,
) -> Progress {
    let elapsed = started.elapsed().as_secs_f64();
    let enrolled = stats.enrolled.load(Relaxed);
    if enrolled_at.is_none() && enrolled >= count as u64 {
        *enrolled_at = Some(elapsed);
    }
    let cpu = cpu_secs("self").unwrap_or(0.0);
    let dt = last_cpu.0.elapsed().as_secs_f64().max(1e-3);
    let cpu_pct = (cpu - last_cpu.1) / dt * 100.0;
    *last_cpu = (Instant::now(), cpu);
    Progress {
        elapsed_s: elapsed,
        enrolled,
        enroll_rate: enrolled as f64 / enrolled_at.unwrap_or(elapsed).max(1e-3),
        enroll_failed: stats.enroll_failed.load(Relaxed),
        connected: stats.connected.load(Relaxed),
        connect_failed: stats.connect_failed.load(Relaxed),
        disconnects: stats.disconnects.load(Relaxed),
        reports_ok: stats.reports_ok.load(Relaxed),
        reports_failed: stats.reports_failed.load(Relaxed),
        renewals: stats.renewals.load(Relaxed),
        renew_failed: stats.renew_failed.load(Relaxed),
        all_connected_s: None,
        rss_mib: rss_mib("self").unwrap_or(0.0),
        cpu_pct,
    }
}

/// Parses `900`, `30s`, `15m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 15m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn own_memory_and_cpu_are_read_from_proc() {
        assert!(rss_mib("self").unwrap() > 0.0);
        assert!(cpu_secs("self").unwrap() >= 0.0);
        assert!(open_files_limit().unwrap() > 0);
    }
}
