//! The local demo of `wegweiser up`: enrolls this machine's agent into the demo tenant and
//! keeps it running beside the control plane, so a newcomer sees their own machine live.
//!
//! The agent is the real `wegweiser-agent` binary found next to `wegweiser`; it enrolls once
//! through the real HTTPS enrollment path with a single-use token (its state lives in
//! `<data dir>/agent`, owner-only like any agent's) and then runs as a child process whose
//! output goes to `<data dir>/agent/agent.log`. A later `up` finds the enrollment and only
//! starts it again.

use crate::authority::Authority;
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};
use wegweiser_shared::ids::TenantId;

/// The agent's configuration file: present once the agent has enrolled.
const AGENT_CONFIG: &str = "agent.toml";

/// How long the demo agent's enrollment may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo agent, running.
#[derive(Debug)]
pub struct DemoAgent {
    child: Child,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Whether it enrolled during this start (false: it was enrolled before).
    pub enrolled_now: bool,
}

/// The agent binary next to the running `wegweiser` executable, if there is one.
pub fn agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.with_file_name(format!("wegweiser-agent{}", std::env::consts::EXE_SUFFIX));
    bin.is_file().then_some(bin)
}

/// Enrolls the agent at `binary` into `tenant` unless `<data_dir>/agent` already holds an
/// enrollment, then starts it.
pub async fn start(
    auth: &Authority,
    binary: &Path,
    data_dir: &Path,
    tenant: &TenantId,
) -> anyhow::Result<DemoAgent> {
    let state_dir = std::path::absolute(data_dir.join("agent"))?;
    let http = auth.config().http.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the demo agent needs the HTTPS listener; run init with --http-port")
    })?;
    let enrolled_now = !state_dir.join(AGENT_CONFIG).exists();
    if enrolled_now {
        let (token, _) = auth
            .create_token(crate::enrollment::NewToken {
                tenant: tenant.clone(),
                organization: None,
                group: None,
                ttl_secs: Some(600),
                max_uses: Some(1),
                label: "wegweiser up: this machine".into(),
            })
            .await?;
        let mut cmd = Command::new(binary);
        cmd.arg("--state-dir")
            .arg(&state_dir)
            .arg("enroll")
            .arg("--url")
            .arg(&http.public_url)
            // The token travels in the environment, not on the command line (process lists).
            .env("WEGWEISER_ENROLL_TOKEN", token.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = ca_file(auth) {
            cmd.arg("--ca-file").arg(ca);
        }
        let out = tokio::time::timeout(ENROLL_TIMEOUT, cmd.output())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the demo agent did not finish enrolling within 60 s")
            })??;
        if !out.status.success() {
            anyhow::bail!(
                "the demo agent could not enroll ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let log = state_dir.join("agent.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = Command::new(binary)
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("run")
        .env_remove("WEGWEISER_ENROLL_TOKEN")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()?;
    Ok(DemoAgent {
        child,
        state_dir,
        log,
        enrolled_now,
    })
}

impl DemoAgent {
    /// Stops the agent: asks it to stop (SIGTERM; a terminal's Ctrl-C reaches it directly),
    /// and kills it after a grace period.
    pub async fn stop(mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Waits until the HTTPS listener at `addr` accepts connections (it starts in a task), so
/// nothing is announced, and no agent enrolls, before it can be reached.
pub async fn wait_listening(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the HTTPS server did not start listening on {addr} within 15 s; see the log above"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CA certificate the dev TLS material was made with, when there is one.
fn ca_file(auth: &Authority) -> Option<PathBuf> {
    let http = auth.config().http.as_ref()?;
    http.tls_cert
        .parent()
        .map(|d| d.join(crate::certs::files::CA))
        .filter(|p| p.exists())
}
