//! `wegweiser keys …` (command trust) and `wegweiser cmd …` (signed commands) on the command
//! line.

use crate::{
    authority::Authority,
    commands::{CommandReport, CommandRequest, Target},
    trust::{self, TrustRecord},
};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};
use wegweiser_shared::{
    command::{CollectWhat, Command},
    ids::{DeviceId, TenantId},
    time::now,
};

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the trust root, the keyset, the command keys and the rotation in progress.
    Show,
    /// Start a command key rotation: publish the next key now, sign with it once devices
    /// report the new keyset (or after the grace period), retire the old one after that.
    Rotate {
        /// Longest wait for online devices before switching, seconds (default: config).
        #[arg(long)]
        grace_secs: Option<i64>,
        /// Directory with the root keys (default: the keystore's `root` directory).
        #[arg(long)]
        root_keys: Option<PathBuf>,
    },
    /// Revoke a command key at once (a new key signs if it was the signing key).
    Revoke {
        /// The key id (`wegweiser keys show`).
        keyid: String,
        /// Directory with the root keys.
        #[arg(long)]
        root_keys: Option<PathBuf>,
    },
    /// Sign the keyset again (new version and expiry), e.g. with offline root keys.
    Resign {
        /// Directory with the root keys.
        #[arg(long)]
        root_keys: Option<PathBuf>,
    },
    /// Rotate the trust root: new keys signed by the old and the new root; old keys deleted.
    RotateRoot {
        /// Signatures the new root needs.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Keys of the new root.
        #[arg(long, default_value_t = 1)]
        keys: usize,
        /// Directory with the current root keys (the new ones are written there too).
        #[arg(long)]
        root_keys: Option<PathBuf>,
    },
}

/// `cmd` options: which devices, what to do.
#[derive(Debug, Args)]
pub struct CmdArgs {
    /// Tenant.
    #[arg(long)]
    pub tenant: TenantId,
    /// One device.
    #[arg(long, conflicts_with_all = ["group", "organization", "all"])]
    pub device: Option<DeviceId>,
    /// Every device of a group.
    #[arg(long, conflicts_with_all = ["organization", "all"])]
    pub group: Option<String>,
    /// Every device of an organization.
    #[arg(long, conflicts_with = "all")]
    pub organization: Option<String>,
    /// Every device of the tenant.
    #[arg(long)]
    pub all: bool,
    /// Seconds to wait for results.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub what: CmdKind,
}

/// The command kinds.
#[derive(Debug, Subcommand)]
pub enum CmdKind {
    /// Answer at once.
    Ping,
    /// Collect and send a report now.
    Collect {
        /// `inventory` or `metrics`.
        what: String,
    },
    /// Change report intervals until the agent restarts.
    SetIntervals {
        /// Heartbeat interval, seconds.
        #[arg(long)]
        heartbeat: Option<u64>,
        /// Metrics interval, seconds.
        #[arg(long)]
        metrics: Option<u64>,
    },
    /// Renew the device credentials now.
    Renew,
    /// Restart the agent.
    Restart,
    /// Run a shell command (the device's policy must allow `run`).
    Run {
        /// Seconds before it is killed.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// The command line.
        script: String,
    },
    /// List processes.
    Processes {
        /// At most this many, by CPU use.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

impl CmdKind {
    fn command(self) -> anyhow::Result<Command> {
        Ok(match self {
            Self::Ping => Command::Ping {},
            Self::Collect { what } => Command::Collect {
                what: match what.as_str() {
                    "inventory" => CollectWhat::Inventory,
                    "metrics" => CollectWhat::Metrics,
                    other => anyhow::bail!("collect what? {other:?}: say inventory or metrics"),
                },
            },
            Self::SetIntervals { heartbeat, metrics } => Command::SetIntervals {
                heartbeat_secs: heartbeat,
                metrics_secs: metrics,
            },
            Self::Renew => Command::Renew {},
            Self::Restart => Command::Restart {},
            Self::Run {
                timeout_secs,
                script,
            } => Command::Run {
                script,
                timeout_secs,
            },
            Self::Processes { limit } => Command::Processes { limit },
        })
    }
}

fn root_keys(data_dir: &Path, given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| trust::root_dir(data_dir))
}

#[derive(Serialize)]
struct KeysView<'a> {
    root_version: u64,
    keyset_version: u64,
    keyset_expires_at: i64,
    signing: &'a str,
    keys: Vec<KeyView<'a>>,
    rotation: Option<&'a trust::Rotation>,
}

#[derive(Serialize)]
struct KeyView<'a> {
    keyid: &'a str,
    status: wegweiser_shared::trust::KeyStatus,
    created_at: i64,
    changed_at: i64,
}

fn keys_view(rec: &TrustRecord) -> KeysView<'_> {
    KeysView {
        root_version: rec.root_version,
        keyset_version: rec.keyset.version,
        keyset_expires_at: rec.keyset.expires_at,
        signing: &rec.signing,
        keys: rec
            .keys
            .iter()
            .map(|k| KeyView {
                keyid: &k.keyid,
                status: k.status,
                created_at: k.created_at,
                changed_at: k.changed_at,
            })
            .collect(),
        rotation: rec.rotation.as_ref(),
    }
}

fn keys_text(v: &KeysView<'_>) -> String {
    let mut s = format!(
        "root version {}\nkeyset version {} (expires in {} s)\n",
        v.root_version,
        v.keyset_version,
        v.keyset_expires_at - now()
    );
    for k in &v.keys {
        let _ = writeln!(
            s,
            "  {} {:?}{}",
            k.keyid,
            k.status,
            if k.keyid == v.signing {
                " (signing)"
            } else {
                ""
            }
        );
    }
    if let Some(r) = v.rotation {
        let _ = writeln!(
            s,
            "rotation: {:?} since {} ({} → {})",
            r.phase, r.since, r.old, r.next
        );
    }
    s
}

/// Runs `keys …`.
pub async fn keys(data_dir: &Path, cmd: KeysCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    let rec = match cmd {
        KeysCommand::Show => {
            let (rec, _) = auth.trust_record().await?;
            // Check what devices would get, as a device would.
            let bundle = auth.trust_bundle().await?;
            trust::check_bundle(&bundle)
                .map_err(|e| anyhow::anyhow!("the stored trust bundle does not verify: {e}"))?;
            rec
        }
        KeysCommand::Rotate {
            grace_secs,
            root_keys: dir,
        } => {
            auth.keys_rotate(&root_keys(data_dir, dir), grace_secs)
                .await?
        }
        KeysCommand::Revoke {
            keyid,
            root_keys: dir,
        } => auth.keys_revoke(&root_keys(data_dir, dir), &keyid).await?,
        KeysCommand::Resign { root_keys: dir } => {
            auth.keys_resign(&root_keys(data_dir, dir)).await?
        }
        KeysCommand::RotateRoot {
            threshold,
            keys,
            root_keys: dir,
        } => {
            auth.rotate_root(&root_keys(data_dir, dir), threshold, keys)
                .await?
        }
    };
    let view = keys_view(&rec);
    crate::cli::print(json, &view, || keys_text(&view));
    auth.close().await;
    Ok(())
}

/// Runs `cmd …`. Fails (exit code 1) when a device did not answer `ok`.
pub async fn cmd(data_dir: &Path, a: CmdArgs, json: bool) -> anyhow::Result<()> {
    let target = match (a.device, a.group, a.organization, a.all) {
        (Some(d), None, None, false) => Target::Device(d),
        (None, Some(g), None, false) => Target::Group(g),
        (None, None, Some(o), false) => Target::Organization(o),
        (None, None, None, true) => Target::All,
        _ => anyhow::bail!("say which devices: --device ID, --group G, --organization O or --all"),
    };
    let auth = Authority::open(data_dir).await?;
    let report = auth
        .send_command(CommandRequest {
            tenant: a.tenant,
            target,
            command: a.what.command()?,
            by: "cli".to_owned(),
            timeout: Duration::from_secs(a.timeout.clamp(1, 3600)),
        })
        .await?;
    crate::cli::print(json, &report, || report_text(&report));
    auth.close().await;
    let failed = report.devices.iter().filter(|d| d.status() != "ok").count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} devices did not succeed",
            report.devices.len()
        );
    }
    Ok(())
}

fn report_text(r: &CommandReport) -> String {
    let mut s = format!("signed by {} (keyset {})\n", r.keyid, r.keyset_version);
    for d in &r.devices {
        let latency = d
            .latency_us
            .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "{}  {}  {}  {}", d.device, d.status(), latency, d.id);
        if let Some(res) = &d.result {
            if let Some(e) = &res.error {
                let _ = writeln!(s, "    error: {e}");
            }
            if !res.output.is_null() {
                let out = serde_json::to_string_pretty(&res.output).unwrap_or_default();
                for line in out.lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
    }
    s
}
