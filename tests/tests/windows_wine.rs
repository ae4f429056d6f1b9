//! The Windows agent (`wegweiser-agent.exe`, cross-compiled with MinGW-w64) under Wine against
//! the real control plane and nats-server: it enrolls over HTTPS with the CA it is given, runs,
//! and its inventory (reporting Windows and Wine's `MachineGuid`) and metrics are stored and
//! acknowledged by the control plane. (The Windows service is not exercised here: see
//! `docs/ARCHITECTURE.md`.)
//!
//! Needs Wine and MinGW-w64 (`scripts/install-windows-toolchain`) and the `.exe`
//! (`cargo build -p wegweiser-agent --target x86_64-pc-windows-gnu`); `scripts/test` does both.
//! `WEGWEISER_SKIP_WINE=1` skips it, loudly; anything missing otherwise fails it.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};
use wegweiser_shared::{
    ids::{DeviceId, TenantId},
    telemetry::{Inventory, Kind, Metrics},
};
use wegweiser_tests::{
    Platform,
    wine::{Wine, windows_path},
};

/// Kills the agent's Wine process if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.join("agent.log")).unwrap_or_default()
}

/// Heartbeats, metrics and the inventory check every second, to keep the test short.
fn fast_reports(state: &Path) {
    let cfg = state.join("agent.toml");
    let mut v: toml::Table = std::fs::read_to_string(&cfg).unwrap().parse().unwrap();
    v.insert("heartbeat_secs".into(), toml::Value::Integer(1));
    v.insert("metrics_secs".into(), toml::Value::Integer(1));
    std::fs::write(&cfg, toml::to_string(&v).unwrap()).unwrap();
}

async fn latest(
    p: &Platform,
    tenant: &TenantId,
    device: &DeviceId,
    kind: Kind,
    within: Duration,
    state: &Path,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = p.auth.latest(tenant, device, kind).await.unwrap() {
            return l.report;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind:?} from the Windows agent; its log:\n{}",
            log_of(state)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_agent_enrolls_and_reports_under_wine() {
    let Some(wine) = tokio::task::spawn_blocking(Wine::setup)
        .await
        .unwrap()
        .unwrap()
    else {
        return;
    };
    let p = Platform::start().await.unwrap();
    let t = p.tenant("acme").await.unwrap();
    let _tasks = p.serve().await.unwrap();
    let state = p.dir.path().join("agent");
    let state_arg = windows_path(&state);

    // Enroll: the token only in the environment, the CA given as a Windows path.
    let token = p.token(&t.id, 1).await.unwrap();
    let mut enroll = wine.agent();
    enroll
        .args(["--state-dir", &state_arg, "--json", "enroll", "--url"])
        .arg(p.https_url())
        .arg("--ca-file")
        .arg(windows_path(&p.ca))
        .env("WEGWEISER_ENROLL_TOKEN", token.expose());
    let out = tokio::task::spawn_blocking(move || enroll.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "enroll failed: {stderr}\n{stdout}");
    assert!(!stdout.contains(token.expose()) && !stderr.contains(token.expose()));
    let json_start = stdout.find('{').unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout[json_start..]).unwrap();
    let device: DeviceId = v["device_id"].as_str().unwrap().parse().unwrap();
    // The device seed was made on the device; the control plane holds only its public key.
    let (rec, _) = p.auth.device_entry(&t.id, &device).await.unwrap().unwrap();
    let seed = std::fs::read_to_string(state.join("device.nk")).unwrap();
    assert_eq!(
        nkeys::KeyPair::from_seed(seed.trim()).unwrap().public_key(),
        rec.public_key.as_str()
    );
    fast_reports(&state);

    // Run in a console: inventory and metrics arrive, are acknowledged and kept as the latest.
    let run = Running(
        wine.agent()
            .args(["--state-dir", &state_arg, "run"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.join("agent.log")).unwrap(),
            ))
            .spawn()
            .unwrap(),
    );
    let within = Duration::from_secs(60);
    let inv = latest(&p, &t.id, &device, Kind::Inventory, within, &state).await;
    let inv: Inventory = serde_json::from_value(inv).unwrap();
    assert_eq!(inv.os, "windows", "{inv:?}");
    assert_eq!(inv.arch, "x86_64", "{inv:?}");
    assert!(!inv.os_version.is_empty(), "{inv:?}");
    assert!(!inv.hostname.is_empty(), "{inv:?}");
    assert_eq!(inv.machine_id, wine.machine_guid().unwrap(), "{inv:?}");
    assert!(inv.cpu_cores > 0 && inv.memory_total > 0, "{inv:?}");
    // Metrics: the second report onwards has a CPU figure from GetSystemTimes.
    let deadline = Instant::now() + within;
    let met = loop {
        let met = latest(&p, &t.id, &device, Kind::Metrics, within, &state).await;
        let met: Metrics = serde_json::from_value(met).unwrap();
        if met.seq > 0 && met.memory_used > 0 && met.process_count > 0 && met.uptime > 0 {
            break met;
        }
        assert!(Instant::now() < deadline, "metrics incomplete: {met:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!((0.0..=100.0).contains(&met.cpu), "{met:?}");
    assert!(met.load.is_none(), "{met:?}");
    let log = log_of(&state);
    assert!(
        !log.contains(token.expose()) && !log.contains(seed.trim()),
        "a secret in the log"
    );
    drop(run);

    // The enrollment is kept.
    assert!(state.join("device.nk").exists());
}
