//! The README's run command, end to end: the real `wegweiser up` process starts nats-server,
//! the control plane, the demo tenant and the platform operator (its one-time password shown
//! in the output and nowhere on disk), enrolls this machine's real agent and runs it, so the
//! operator who logs in over HTTPS sees this machine online. A second `up` reuses everything:
//! no new password, no second enrollment.
#![allow(clippy::unwrap_used)]

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};
use wegweiser_cp::nats_server;
use wegweiser_tests::{
    agent::{agent_binary, cp_binary},
    https_client,
};

/// A running `wegweiser up`, stopped (SIGTERM) and reaped on drop.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `wegweiser up --json` and returns it with the JSON object it printed once ready.
fn start_up(data: &Path, nats_port: u16, http_port: u16) -> (Up, serde_json::Value) {
    // The agent is found next to `wegweiser`; both are cargo's builds of this profile.
    assert!(agent_binary().exists());
    let mut child = Command::new(cp_binary())
        .args(["--json", "--data-dir"])
        .arg(data)
        .args(["up", "--port", &nats_port.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .env("WEGWEISER_NATS_SERVER", nats_server::locate().unwrap())
        .env_remove("WEGWEISER_ADMIN_PASSWORD")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
                let _ = tx.send(v);
                buf.clear();
            }
        }
    });
    let up = Up(child);
    let banner = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("`wegweiser up` printed no JSON banner within 90 s");
    (up, banner)
}

fn stop(mut up: Up) {
    Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = up.0.try_wait().unwrap() {
            assert!(status.success(), "`wegweiser up` exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("`wegweiser up` did not stop within 20 s of SIGTERM");
}

/// Logs in and returns the session cookie (`name=value`).
fn login(http: &ureq::Agent, base: &str, password: &str) -> String {
    let mut r = http
        .post(format!("{base}/v1/auth/login"))
        .header("content-type", "application/json")
        .send(serde_json::json!({"user": "admin", "password": password}).to_string())
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 200, "login with the printed password: {text}");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| !c.contains("Max-Age=0"))
        .expect("login sets a session cookie");
    cookie.split(';').next().unwrap().to_owned()
}

fn devices(http: &ureq::Agent, base: &str, cookie: &str) -> Vec<serde_json::Value> {
    let mut r = http
        .get(format!("{base}/v1/tenants/demo/devices"))
        .header("cookie", cookie)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

#[test]
fn up_runs_the_demo_with_this_machine_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (nats_port, http_port) = (
        nats_server::free_port().unwrap(),
        nats_server::free_port().unwrap(),
    );
    let (up, banner) = start_up(&data, nats_port, http_port);
    let password = banner["admin_password"]
        .as_str()
        .expect("the first start shows the operator's one-time password")
        .to_owned();
    assert!(password.len() >= 16, "a generated password is long");
    assert!(
        !data
            .join(wegweiser_cp::users::INITIAL_PASSWORD_FILE)
            .exists(),
        "the password is shown, not left on disk"
    );
    let base = format!("https://localhost:{http_port}");
    assert_eq!(banner["dashboard"], format!("{base}/app/"));
    assert_eq!(banner["enroll_command"], serde_json::Value::Null);

    let http = https_client(&data.join("certs").join(wegweiser_cp::certs::files::CA));
    let cookie = login(&http, &base, &password);
    let deadline = Instant::now() + Duration::from_secs(60);
    let device = loop {
        let list = devices(&http, &base, &cookie);
        if let Some(d) = list.iter().find(|d| d["online"] == true) {
            assert_eq!(list.len(), 1, "exactly this machine is enrolled: {list:?}");
            break d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "this machine's agent was not online within 60 s: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let this_host = sysinfo_hostname();
    if let Some(h) = this_host {
        assert_eq!(device["hostname"], h, "the device is this machine");
    }
    stop(up);

    // Again: same operator (no new password), same enrollment, the agent running again.
    let (up, banner) = start_up(&data, nats_port, http_port);
    assert_eq!(banner["admin_password"], serde_json::Value::Null);
    let cookie = login(&http, &base, &password);
    let list = devices(&http, &base, &cookie);
    assert_eq!(list.len(), 1, "no second enrollment: {list:?}");
    assert_eq!(list[0]["id"], device["id"]);
    stop(up);
}

/// This machine's host name as the agent reports it, where the OS tells it.
fn sysinfo_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
