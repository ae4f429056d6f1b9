//! The real agent binary in tests: finding it, enrolling it against a platform, running it,
//! and watching its heartbeats from the control plane. Every helper panics on failure: a failed
//! step is a failed test.
#![allow(clippy::unwrap_used)]

use crate::{Platform, PlatformOptions};
use futures::StreamExt;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use wegweiser_shared::ids::{DeviceId, TenantId};

/// The agent binary cargo built next to this test (`target/<profile>/wegweiser-agent`).
pub fn agent_binary() -> PathBuf {
    built_binary("wegweiser-agent", "wegweiser-agent")
}

/// The control-plane binary cargo built next to this test (`target/<profile>/wegweiser`).
pub fn cp_binary() -> PathBuf {
    built_binary("wegweiser", "wegweiser-control-plane")
}

fn built_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p {package}` (scripts/test does)",
        bin.display()
    );
    bin
}

pub fn agent(state: &Path) -> Command {
    let mut c = Command::new(agent_binary());
    c.arg("--state-dir")
        .arg(state)
        .env_remove("WEGWEISER_ENROLL_TOKEN");
    c
}

/// A running agent process, killed on drop.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Running {
    pub fn start(state: &Path) -> Self {
        let child = agent(state)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("agent.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Self(child)
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn setup(ttl: Option<i64>) -> (Platform, TenantId, wegweiser_cp::cli::ServiceTasks) {
    let p = Platform::start_with(PlatformOptions {
        device_ttl: ttl,
        ..Default::default()
    })
    .await
    .unwrap();
    let t = p.tenant("acme").await.unwrap();
    let tasks = p.serve().await.unwrap();
    (p, t.id, tasks)
}

pub async fn enroll_agent(p: &Platform, tenant: &TenantId, state: &Path) -> DeviceId {
    let token = p.token(tenant, 1).await.unwrap();
    let mut c = agent(state);
    c.args(["--json", "enroll", "--url", &p.https_url(), "--ca-file"])
        .arg(&p.ca)
        .env("WEGWEISER_ENROLL_TOKEN", token.expose());
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The token never shows up in what the agent printed.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(token.expose()));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token.expose()));
    v["device_id"].as_str().unwrap().parse().unwrap()
}

/// Makes heartbeats come every second, to keep the tests short.
pub fn fast_heartbeats(state: &Path) {
    configure(state, false);
}

/// Fast heartbeats, and optionally a new device key at every renewal.
pub fn configure(state: &Path, rotate: bool) {
    let cfg = state.join("agent.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut v: toml::Table = text.parse().unwrap();
    v.insert("heartbeat_secs".into(), toml::Value::Integer(1));
    v.insert("rotate_key_on_renew".into(), toml::Value::Boolean(rotate));
    v.insert("metrics_secs".into(), toml::Value::Integer(1));
    std::fs::write(&cfg, toml::to_string(&v).unwrap()).unwrap();
}

/// The control plane's view of one device's heartbeats.
pub async fn heartbeats(
    p: &Platform,
    account: &wegweiser_shared::ids::AccountKey,
    device: &DeviceId,
) -> async_nats::Subscriber {
    let subject = format!("wg.{account}.up.{device}.tel.hb");
    let sub = p.auth.cp_client().subscribe(subject.clone()).await.unwrap();
    p.auth.cp_client().flush().await.unwrap();
    p.wait_subscribed(p.auth.cp_account(), &[subject])
        .await
        .unwrap();
    sub
}

pub async fn next_heartbeat(
    sub: &mut async_nats::Subscriber,
    within: Duration,
) -> Option<serde_json::Value> {
    let m = tokio::time::timeout(within, sub.next()).await.ok()??;
    serde_json::from_slice(&m.payload).ok()
}
