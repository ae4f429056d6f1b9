//! The `wegweiser` command line. `main.rs` calls [`main`]; everything else lives in the library.

use crate::{
    authority::{Authority, AuthorityError, NewTenant},
    config::{Config, DEFAULT_DATA_DIR, ENV_DATA_DIR, TenantLimits},
    init::{self, InitOptions, TlsFiles},
    keystore,
    nats_server::{self, NatsServerProcess},
    retention::RetentionDays,
    tenant::TechnicianScope,
};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};
use wegweiser_shared::ids::{DeviceId, TenantId, UserKey, UserName};

/// Exit code for bad usage or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when a needed service is unavailable (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the audit chain does not verify (EX_DATAERR).
pub const EXIT_DATAERR: u8 = 65;

/// Wegweiser control plane: NATS credential authority for MSP tenants.
#[derive(Debug, Parser)]
#[command(name = "wegweiser", version, about)]
pub struct Cli {
    /// Data directory (config, keystore, nats-server files).
    #[arg(long, global = true, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create keys, keystore, wegweiser.toml and a nats-server configuration (never replaces keys).
    Init(InitArgs),
    /// Run the control-plane service against a running nats-server.
    Serve,
    /// Local all-in-one: init if needed, start nats-server and the service, create a demo tenant.
    Up(UpArgs),
    /// TLS material.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Tenants (one NATS account each).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Issue user credentials.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Organizations (an MSP's clients) of a tenant.
    #[command(subcommand)]
    Org(crate::cli_hierarchy::OrgCommand),
    /// Groups of an organization.
    #[command(subcommand)]
    Group(crate::cli_hierarchy::GroupCommand),
    /// Live tail of a tenant's reports, through subscribe-only technician credentials.
    Watch {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Only this device.
        #[arg(long)]
        device: Option<DeviceId>,
    },
    /// Command trust: root of trust, keyset, command keys and their rotation.
    #[command(subcommand)]
    Keys(crate::cli_commands::KeysCommand),
    /// Send a signed command to devices and wait for their results.
    Cmd(crate::cli_commands::CmdArgs),
    /// The audit trail: verify its hash chain, list a tenant's entries.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Users of the HTTPS API (login, role bindings).
    #[command(subcommand)]
    User(crate::cli_users::UserCommand),
    /// API tokens for automation (`Authorization: Bearer wgapi_…`).
    #[command(subcommand)]
    ApiToken(crate::cli_users::ApiTokenCommand),
    /// Log in to a control plane's HTTPS API: saves an expiring API token for `wegweiser api`.
    Login(crate::cli_api::LoginArgs),
    /// Revoke the saved API token and forget the login.
    Logout,
    /// One authenticated API request (`wegweiser api GET /v1/tenants`); prints the JSON answer.
    Api(crate::cli_api::ApiArgs),
    /// Subscribe-only NATS credentials for a user, limited to the devices it may read.
    Creds(crate::api_creds::CredsArgs),
    /// Revoke a user: its JWTs stop working and live connections are dropped at once.
    Revoke {
        /// Tenant id.
        #[arg(long)]
        tenant: TenantId,
        /// User public key (U…).
        #[arg(long)]
        user: UserKey,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Read the whole audit stream and check its hash chain; exits 65 naming the first bad
    /// entry, else prints the number of entries and the head hash.
    Verify,
    /// A tenant's audit entries, oldest first.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Only this kind (e.g. `enroll.refused`).
        #[arg(long)]
        kind: Option<String>,
        /// Only entries at or after this time: Unix seconds or RFC 3339.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Most entries to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Stream sequence to start at (the `next` of a previous page).
        #[arg(long, default_value_t = 0)]
        start: u64,
    },
}

fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| format!("{s:?} is neither Unix seconds nor an RFC 3339 time"))
}

/// `init` options.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address nats-server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// nats-server client port.
    #[arg(long, default_value_t = 4222)]
    pub port: u16,
    /// nats-server monitoring port (HTTP, bound to 127.0.0.1 only); omit to disable.
    #[arg(long)]
    pub monitor_port: Option<u16>,
    /// Server certificate (PEM) for TLS; needs --tls-key and --tls-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) clients verify the server with.
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// nats-server name.
    #[arg(long, default_value = "wegweiser")]
    pub server_name: String,
    /// Port of the control plane's HTTPS server (needs the TLS options; same certificate).
    #[arg(long, default_value_t = 8443)]
    pub http_port: u16,
    /// Signatures the command trust root needs (t of --root-keys).
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u32,
    /// Keys of the command trust root (kept in keys/root; may be moved offline).
    #[arg(long, default_value_t = 1)]
    pub root_keys: usize,
}

/// `up` options.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// nats-server client port (used when `up` runs init).
    #[arg(long, default_value_t = 4222)]
    pub port: u16,
    /// HTTPS port of the control plane (used when `up` runs init).
    #[arg(long, default_value_t = 8443)]
    pub http_port: u16,
    /// The demo tenant to create if missing.
    #[arg(long, default_value = "demo")]
    pub tenant: TenantId,
    /// Do not enroll and run this machine's agent (print the enrollment command instead).
    #[arg(long)]
    pub no_agent: bool,
}

/// Token subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token (shown once; only its hash is stored).
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Organization enrolled devices belong to.
        #[arg(long)]
        organization: Option<String>,
        /// Group enrolled devices belong to.
        #[arg(long)]
        group: Option<String>,
        /// Lifetime in seconds (default from config: 24 h).
        #[arg(long)]
        expires_in_secs: Option<i64>,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: u32,
        /// Free text.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's tokens and the devices each enrolled.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a token.
    Revoke {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Token id (12 characters, from `token list`).
        id: String,
    },
}

/// Device subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List a tenant's devices.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Show one device.
    Show {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Device id.
        device: DeviceId,
    },
    /// Delete a device's reports (history and latest); audited.
    Purge {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Device id.
        device: DeviceId,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Revoke a device: disconnected at once, renewals refused, a new token needed to come back.
    Revoke {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Device id.
        device: DeviceId,
    },
    /// Delete a device: credentials revoked, reports purged, record removed.
    Delete {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Device id.
        device: DeviceId,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Move a device to an existing organization (and group).
    Move {
        /// Tenant.
        #[arg(long)]
        tenant: TenantId,
        /// Device id.
        device: DeviceId,
        /// Organization.
        #[arg(long)]
        organization: String,
        /// Group of that organization.
        #[arg(long)]
        group: Option<String>,
    },
}

/// Certificate subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA and server certificate (localhost, 127.0.0.1, ::1 and --name).
    Dev {
        /// Output directory (default: `<data-dir>/certs`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
}

/// Tenant subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant: account with limits and scoped signing keys, pushed and verified.
    Create {
        /// Tenant id (lowercase slug).
        id: TenantId,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Keep its reports this many days, 1 to 3650 (default: telemetry_retention_days).
        #[arg(long, value_name = "DAYS")]
        retention_days: Option<RetentionDays>,
    },
    /// List tenants.
    List,
    /// Show one tenant.
    Show {
        /// Tenant id.
        id: TenantId,
    },
    /// Delete a tenant: its account leaves the resolver, its connections drop, its secrets are destroyed.
    Delete {
        /// Tenant id.
        id: TenantId,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Start a signing-key rotation: new keys sign from now on, old keys keep working until retired.
    RotateKeys {
        /// Tenant id.
        id: TenantId,
    },
    /// Keep a tenant's reports DAYS days (1 to 3650); a shorter retention purges older reports now.
    SetRetention {
        /// Tenant id.
        id: TenantId,
        /// Days.
        days: RetentionDays,
    },
    /// Push the stored account JWT again and check nats-server applied it.
    Sync {
        /// Tenant id.
        id: TenantId,
    },
    /// Finish a rotation: remove the old keys once no live connection uses them.
    RetireKeys {
        /// Tenant id.
        id: TenantId,
        /// Retire even if clients still use them (they are disconnected).
        #[arg(long)]
        force: bool,
    },
}

/// Limit overrides for a new tenant.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Concurrent connections (-1 unlimited).
    #[arg(long, allow_negative_numbers = true)]
    pub max_connections: Option<i64>,
    /// Subscriptions (-1 unlimited).
    #[arg(long, allow_negative_numbers = true)]
    pub max_subscriptions: Option<i64>,
    /// Largest payload, bytes.
    #[arg(long, allow_negative_numbers = true)]
    pub max_payload: Option<i64>,
    /// JetStream disk storage in the tenant account, bytes (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    pub jetstream_disk: Option<i64>,
}

/// Issue subcommands.
#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// A device JWT for a public key the device generated (prints the JWT).
    Device {
        /// Tenant id.
        #[arg(long)]
        tenant: TenantId,
        /// Device id (one token: letters, digits, '-', '_').
        #[arg(long)]
        device: DeviceId,
        /// The device's user public key (U…).
        #[arg(long)]
        public_key: UserKey,
        /// Lifetime in seconds (default from config).
        #[arg(long)]
        ttl_secs: Option<i64>,
    },
    /// Subscribe-only technician credentials, written to a creds file (mode 0600).
    Technician {
        /// Tenant id.
        #[arg(long)]
        tenant: TenantId,
        /// Technician name (one token).
        #[arg(long)]
        name: UserName,
        /// A device the technician may watch (repeatable).
        #[arg(
            long = "device",
            conflicts_with = "all_devices",
            required_unless_present = "all_devices"
        )]
        devices: Vec<DeviceId>,
        /// Every device of the tenant.
        #[arg(long)]
        all_devices: bool,
        /// Lifetime in seconds (default from config).
        #[arg(long)]
        ttl_secs: Option<i64>,
        /// Where to write the creds file (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let long_running = matches!(cli.command, Command::Serve | Command::Up(_));
    let default = if long_running {
        "info,async_nats=warn"
    } else {
        "warn,async_nats=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<AuthorityError>() {
        Some(AuthorityError::Config(_)) => EXIT_USAGE,
        Some(AuthorityError::Hierarchy(
            crate::hierarchy::HierarchyError::Invalid(_)
            | crate::hierarchy::HierarchyError::UnknownPlace(_),
        )) => EXIT_USAGE,
        Some(AuthorityError::Unreachable { .. }) => EXIT_UNAVAILABLE,
        _ if e.downcast_ref::<crate::audit::ChainFault>().is_some() => EXIT_DATAERR,
        _ if e.downcast_ref::<crate::config::ConfigError>().is_some() => EXIT_USAGE,
        _ if e.downcast_ref::<nats_server::NatsServerError>().is_some() => EXIT_UNAVAILABLE,
        _ => 1,
    }
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        say(&serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        say(&text());
    }
}

/// Writes a line to standard output; a closed pipe (`wegweiser … | head`) ends the output
/// quietly instead of panicking.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Init(a) => {
            let opts = InitOptions {
                data_dir: data_dir.clone(),
                nats_host: a.host,
                nats_port: a.port,
                monitor_port: a.monitor_port,
                tls: match (a.tls_cert, a.tls_key, a.tls_ca) {
                    (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
                    _ => None,
                },
                server_name: a.server_name,
                http_port: Some(a.http_port),
                root_threshold: a.root_threshold,
                root_keys: a.root_keys,
            };
            let report = init::run(&opts)?;
            print(json, &report, || {
                format!(
                    "Initialized {}\n  created: {}\n  kept:    {}\n  operator:           {}\n  system account:     {}\n  control-plane acct: {}\n  nats-server config: {}\n\nStart nats-server with: nats-server -c {}\nThen: wegweiser --data-dir {} serve",
                    report.data_dir.display(),
                    if report.created.is_empty() {
                        "-".into()
                    } else {
                        report.created.join(", ")
                    },
                    if report.kept.is_empty() {
                        "-".into()
                    } else {
                        report.kept.join(", ")
                    },
                    report.operator,
                    report.system_account,
                    report.cp_account,
                    report.nats_config.display(),
                    report.nats_config.display(),
                    data_dir.display(),
                )
            });
            Ok(())
        }
        Command::Serve => serve(&data_dir).await,
        Command::Certs(CertsCommand::Dev { out, names }) => {
            let out = out.unwrap_or_else(|| data_dir.join("certs"));
            let made = crate::certs::dev(&out, &names)?;
            print(json, &made, || {
                format!(
                    "{} development certificates in {} (valid for {}).\n  CA (give to clients): {}\n  server: {} / {}\n\nUse them: wegweiser init --tls-cert {} --tls-key {} --tls-ca {}",
                    if made.created {
                        "Created"
                    } else {
                        "Kept existing"
                    },
                    out.display(),
                    made.names.join(", "),
                    made.ca.display(),
                    made.cert.display(),
                    made.key.display(),
                    made.cert.display(),
                    made.key.display(),
                    made.ca.display(),
                )
            });
            Ok(())
        }
        Command::Up(a) => up(&data_dir, a, json).await,
        Command::Tenant(t) => tenant(&data_dir, t, json).await,
        Command::Token(t) => token(&data_dir, t, json).await,
        Command::Device(d) => device(&data_dir, d, json).await,
        Command::Org(c) => crate::cli_hierarchy::org(&data_dir, c, json).await,
        Command::Group(c) => crate::cli_hierarchy::group(&data_dir, c, json).await,
        Command::Keys(k) => crate::cli_commands::keys(&data_dir, k, json).await,
        Command::Cmd(c) => crate::cli_commands::cmd(&data_dir, c, json).await,
        Command::Watch { tenant, device } => watch(&data_dir, tenant, device, json).await,
        Command::Issue(i) => issue(&data_dir, i, json).await,
        Command::Audit(a) => audit(&data_dir, a, json).await,
        Command::User(u) => crate::cli_users::user(&data_dir, u, json).await,
        Command::ApiToken(t) => crate::cli_users::api_token(&data_dir, t, json).await,
        Command::Login(a) => blocking(move || crate::cli_api::login(a, json)).await,
        Command::Logout => blocking(move || crate::cli_api::logout(json)).await,
        Command::Api(a) => blocking(move || crate::cli_api::api(a)).await,
        Command::Creds(c) => crate::api_creds::cli(&data_dir, c, json).await,
        Command::Revoke { tenant, user } => {
            let auth = Authority::open(&data_dir).await?;
            let at = auth.revoke(&tenant, &user).await?;
            print(
                json,
                &serde_json::json!({"tenant": tenant, "user": user, "revoked_at": at}),
                || {
                    format!(
                        "Revoked {user} in {tenant}; nats-server applied it and drops its live connections."
                    )
                },
            );
            Ok(())
        }
    }
}

/// Runs a blocking client command off the runtime's threads.
async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f).await?
}

async fn audit(data_dir: &Path, cmd: AuditCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        AuditCommand::Verify => {
            let outcome = auth
                .audit_verify(|read, total| {
                    if !json {
                        eprintln!("verified {read} of {total} entries…");
                    }
                })
                .await?;
            match outcome {
                Ok(r) => print(json, &serde_json::json!({"ok": true, "chain": r}), || {
                    format!(
                        "Audit chain intact: {} entries, head {}{}.",
                        r.entries,
                        r.head,
                        if r.unchained > 0 {
                            format!(
                                " ({} older entries before the chain are not protected)",
                                r.unchained
                            )
                        } else {
                            String::new()
                        }
                    )
                }),
                Err(f) => {
                    if json {
                        print(
                            true,
                            &serde_json::json!({"ok": false, "fault": f}),
                            String::new,
                        );
                    }
                    return Err(f.into());
                }
            }
        }
        AuditCommand::List {
            tenant,
            kind,
            since,
            limit,
            start,
        } => {
            let page = auth
                .audit_query(&crate::audit::AuditQuery {
                    tenant: Some(tenant),
                    kind,
                    actor: None,
                    since,
                    until: None,
                    start,
                    limit,
                    newest_first: false,
                })
                .await?;
            print(json, &page, || {
                let mut s = format!(
                    "{:<8} {:<20} {:<24} {:<16} {:<12} DEVICE",
                    "SEQ", "TIME", "KIND", "OUTCOME", "ACTOR"
                );
                for e in &page.entries {
                    let at = time::OffsetDateTime::from_unix_timestamp(e.ts)
                        .ok()
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_else(|| e.ts.to_string());
                    s.push_str(&format!(
                        "\n{:<8} {:<20} {:<24} {:<16} {:<12} {}",
                        e.seq,
                        at,
                        e.kind,
                        e.outcome,
                        e.actor,
                        e.device.as_deref().unwrap_or("-")
                    ));
                }
                if let Some(n) = page.next {
                    s.push_str(&format!("\nMore: --start {n}"));
                }
                s
            });
        }
    }
    Ok(())
}

async fn tenant(data_dir: &Path, cmd: TenantCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        TenantCommand::Create {
            id,
            name,
            limits,
            retention_days,
        } => {
            let mut l: TenantLimits = auth.config().tenant_defaults.clone();
            if let Some(v) = limits.max_connections {
                l.max_connections = v;
            }
            if let Some(v) = limits.max_subscriptions {
                l.max_subscriptions = v;
            }
            if let Some(v) = limits.max_payload {
                l.max_payload = v;
            }
            if let Some(v) = limits.jetstream_disk {
                l.jetstream_disk = v;
            }
            let problems = l.problems();
            if !problems.is_empty() {
                return Err(AuthorityError::Config(crate::config::ConfigError::Invalid {
                    path: "command line".into(),
                    problems,
                })
                .into());
            }
            let r = auth
                .create_tenant(NewTenant {
                    id,
                    name,
                    limits: Some(l),
                    retention_days,
                })
                .await?;
            if let Some(days) = retention_days {
                let mut a = crate::audit::AuditEntry::new("tenant.retention", "cli", "ok");
                a.tenant = Some(r.id.to_string());
                a.detail = serde_json::json!({"retention_days": days.days()});
                auth.audit().record(a).await;
            }
            let s = crate::authority::TenantSummary::from(&r);
            print(json, &s, || {
                format!(
                    "Created tenant {} (account {}); reports kept {} days.",
                    r.id,
                    r.account,
                    auth.retention_of(&r)
                )
            });
        }
        TenantCommand::List => {
            let list: Vec<_> = auth
                .tenants()
                .await?
                .iter()
                .map(crate::authority::TenantSummary::from)
                .collect();
            print(json, &list, || {
                let mut s = format!("{:<24} {:<10} {:<56} NAME", "ID", "STATE", "ACCOUNT");
                for t in &list {
                    s.push_str(&format!(
                        "\n{:<24} {:<10} {:<56} {}",
                        t.id.as_str(),
                        format!("{:?}", t.state).to_lowercase(),
                        t.account.as_str(),
                        t.name
                    ));
                }
                s
            });
        }
        TenantCommand::Show { id } => {
            let r = auth.tenant(&id).await?;
            let s = crate::authority::TenantSummary::from(&r);
            print(json, &s, || {
                serde_json::to_string_pretty(&s).unwrap_or_default()
            });
        }
        TenantCommand::Delete { id, yes } => {
            if !yes {
                anyhow::bail!(
                    "deleting tenant {id} disconnects all its devices and destroys its keys; pass --yes to confirm"
                );
            }
            auth.delete_tenant(&id).await?;
            auth.drop_tenant_bindings(&id, "cli").await?;
            print(json, &serde_json::json!({"deleted": id}), || {
                format!("Deleted tenant {id}.")
            });
        }
        TenantCommand::RotateKeys { id } => {
            let r = auth.rotate_signing_keys(&id).await?;
            let s = crate::authority::TenantSummary::from(&r);
            print(json, &s, || {
                format!(
                    "New signing keys for {id} are published and sign all new credentials.\nOnce devices have renewed, run: wegweiser tenant retire-keys {id}"
                )
            });
        }
        TenantCommand::SetRetention { id, days } => {
            let (r, purged) = auth.set_retention(&id, days, "cli").await?;
            let s = crate::authority::TenantSummary::from(&r);
            print(
                json,
                &serde_json::json!({"tenant": s, "purged": purged}),
                || format!("Reports of {id} are kept {days}; {purged} older report(s) purged."),
            );
        }
        TenantCommand::Sync { id } => {
            auth.sync_tenant(&id).await?;
            print(json, &serde_json::json!({"synced": id}), || {
                format!("nats-server holds the current account of {id}.")
            });
        }
        TenantCommand::RetireKeys { id, force } => {
            let rep = auth.retire_signing_keys(&id, force).await?;
            print(json, &rep, || {
                format!(
                    "Retired {} signing key(s) of {id}; {} connection(s) were still using them.",
                    rep.retired.len(),
                    rep.disconnected
                )
            });
        }
    }
    Ok(())
}

/// The command that enrolls an agent on this machine with `token` (passed in the environment,
/// so it stays out of the process list and shell history), running the agent binary `agent`.
pub fn enroll_command(auth: &Authority, token: &str, agent: &str) -> Option<String> {
    let http = auth.config().http.as_ref()?;
    let ca = http
        .tls_cert
        .parent()
        .map(|d| d.join(crate::certs::files::CA))
        .filter(|p| p.exists());
    let ca = ca
        .map(|p| format!(" --ca-file {}", p.display()))
        .unwrap_or_default();
    Some(format!(
        "WEGWEISER_ENROLL_TOKEN={token} {agent} enroll --url {}{ca}",
        http.public_url
    ))
}

async fn token(data_dir: &Path, cmd: TokenCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        TokenCommand::Create {
            tenant,
            organization,
            group,
            expires_in_secs,
            max_uses,
            label,
        } => {
            let (secret, rec) = auth
                .create_token(crate::enrollment::NewToken {
                    tenant,
                    organization,
                    group,
                    ttl_secs: expires_in_secs,
                    max_uses: Some(max_uses),
                    label,
                })
                .await?;
            let cmd = enroll_command(&auth, secret.expose(), "wegweiser-agent");
            print(
                json,
                &serde_json::json!({"token": secret.expose(), "record": rec, "enroll_command": cmd}),
                || {
                    format!(
                        "Token {} for tenant {} ({} use(s), expires at {}). It is shown only now:\n  {}\n{}",
                        rec.id,
                        rec.tenant,
                        rec.max_uses,
                        rec.expires_at,
                        secret.expose(),
                        cmd.map(|c| format!("\nEnroll an agent with:\n  {c}"))
                            .unwrap_or_default()
                    )
                },
            );
        }
        TokenCommand::List { tenant } => {
            let by_token = auth.token_devices(&tenant).await?;
            let list: Vec<_> = auth
                .tokens(&tenant)
                .await?
                .into_iter()
                .map(|(_, r)| {
                    let devices = by_token.get(&r.id).cloned().unwrap_or_default();
                    (r, devices)
                })
                .collect();
            let json_list: Vec<_> = list
                .iter()
                .map(|(r, d)| serde_json::json!({"token": r, "devices": d}))
                .collect();
            print(json, &json_list, || {
                let mut s = format!(
                    "{:<14} {:>4}/{:<4} {:<12} {:<10} DEVICES",
                    "ID", "USED", "MAX", "EXPIRES", "STATE"
                );
                let now = wegweiser_shared::time::now();
                for (t, devices) in &list {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= now {
                        "expired"
                    } else if t.uses >= t.max_uses {
                        "used"
                    } else {
                        "valid"
                    };
                    let devices: Vec<_> = devices.iter().map(|d| d.as_str()).collect();
                    s.push_str(&format!(
                        "\n{:<14} {:>4}/{:<4} {:<12} {:<10} {}",
                        t.id,
                        t.uses,
                        t.max_uses,
                        t.expires_at,
                        state,
                        devices.join(",")
                    ));
                }
                s
            });
        }
        TokenCommand::Revoke { tenant, id } => {
            let r = auth.revoke_token(&tenant, &id).await?;
            print(json, &r, || format!("Revoked token {}.", r.id));
        }
    }
    Ok(())
}

async fn device(data_dir: &Path, cmd: DeviceCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        DeviceCommand::List { tenant } => {
            let now = wegweiser_shared::time::now();
            let mut rows = Vec::new();
            for d in auth.devices(&tenant).await? {
                let hb = auth
                    .latest(&tenant, &d.id, wegweiser_shared::telemetry::Kind::Heartbeat)
                    .await?;
                let last_seen = hb.map(|h| h.received_at);
                let online = d.state == crate::enrollment::DeviceState::Active
                    && last_seen.is_some_and(|t| now - t <= ONLINE_WITHIN_SECS);
                rows.push((d, last_seen, online));
            }
            let json_rows: Vec<_> = rows
                .iter()
                .map(|(d, seen, online)| serde_json::json!({"device": d, "last_seen": seen, "online": online}))
                .collect();
            print(json, &json_rows, || {
                let mut s = format!(
                    "{:<28} {:<8} {:<8} {:<10} {:<24} {:<8} ENROLLED-BY",
                    "DEVICE", "STATE", "ONLINE", "LAST-SEEN", "HOSTNAME", "OS"
                );
                for (d, seen, online) in &rows {
                    s.push_str(&format!(
                        "\n{:<28} {:<8} {:<8} {:<10} {:<24} {:<8} {}",
                        d.id.as_str(),
                        format!("{:?}", d.state).to_lowercase(),
                        if *online { "online" } else { "offline" },
                        seen.map(|t| format!("{}s ago", now - t))
                            .unwrap_or_else(|| "never".into()),
                        d.facts.hostname,
                        d.facts.os,
                        d.enrolled_by
                    ));
                }
                s
            });
        }
        DeviceCommand::Show { tenant, device } => {
            let Some((d, _)) = auth.device_entry(&tenant, &device).await? else {
                anyhow::bail!(
                    "no device {device} in tenant {tenant}; `wegweiser device list --tenant {tenant}` shows them"
                );
            };
            use wegweiser_shared::telemetry::Kind;
            let hb = auth.latest(&tenant, &device, Kind::Heartbeat).await?;
            let inv = auth.latest(&tenant, &device, Kind::Inventory).await?;
            let met = auth.latest(&tenant, &device, Kind::Metrics).await?;
            let v =
                serde_json::json!({"device": d, "heartbeat": hb, "inventory": inv, "metrics": met});
            print(json, &v, || {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            });
        }
        DeviceCommand::Purge {
            tenant,
            device,
            yes,
        } => {
            if !yes {
                anyhow::bail!(
                    "this deletes every stored report of {device}; pass --yes to confirm"
                );
            }
            let p = auth.purge_reports(&tenant, Some(&device), "cli").await?;
            print(json, &p, || {
                format!(
                    "Deleted {} report(s) and {} latest entr(ies) of {device}.",
                    p.reports, p.latest
                )
            });
        }
        DeviceCommand::Revoke { tenant, device } => {
            let d = auth.revoke_device(&tenant, &device).await?;
            print(json, &d, || {
                format!(
                    "Revoked device {device}: disconnected, renewals refused; it needs a new token to come back."
                )
            });
        }
        DeviceCommand::Delete {
            tenant,
            device,
            yes,
        } => {
            if !yes {
                anyhow::bail!(
                    "this revokes {device}'s credentials and deletes its record and every stored report; pass --yes to confirm"
                );
            }
            let reports = auth.delete_device(&tenant, &device, "cli").await?;
            print(
                json,
                &serde_json::json!({"device": device, "reports": reports}),
                || {
                    format!(
                        "Deleted device {device}: credentials revoked, {reports} report(s) purged."
                    )
                },
            );
        }
        DeviceCommand::Move {
            tenant,
            device,
            organization,
            group,
        } => {
            let d = auth
                .move_device(&tenant, &device, &organization, group.as_deref(), "cli")
                .await?;
            print(json, &d, || {
                format!(
                    "Moved device {device} to organization {organization}{}.",
                    group
                        .as_deref()
                        .map(|g| format!(", group {g}"))
                        .unwrap_or_default()
                )
            });
        }
    }
    Ok(())
}

async fn watch(
    data_dir: &Path,
    tenant: TenantId,
    device: Option<DeviceId>,
    json: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let auth = Authority::open(data_dir).await?;
    let account = auth.tenant(&tenant).await?.account;
    let (scope, subject) = match &device {
        Some(d) => (
            TechnicianScope::Devices(vec![d.clone()]),
            format!("wg.{account}.up.{d}.tel.>"),
        ),
        None => (
            TechnicianScope::AllDevices,
            format!("wg.{account}.up.*.tel.>"),
        ),
    };
    let client = auth
        .technician_client(&tenant, &"wegweiser-watch".parse()?, &scope)
        .await?;
    let mut sub = client.subscribe(subject).await?;
    eprintln!("Watching {tenant} (Ctrl-C to stop).");
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            m = sub.next() => {
                let Some(m) = m else { break };
                let parts: Vec<&str> = m.subject.split('.').collect();
                let (dev, kind) = (parts.get(3).copied().unwrap_or("?"), parts.get(5).copied().unwrap_or("?"));
                if json {
                    let report: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
                    say(&serde_json::json!({"device": dev, "kind": kind, "report": report}).to_string());
                } else {
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
                    let summary = match kind {
                        "hb" => format!("seq {} spool {}", v["seq"], v["spool_depth"]),
                        "met" => format!("cpu {:.1}% mem used {} procs {}", v["cpu"].as_f64().unwrap_or(0.0), v["memory_used"], v["process_count"]),
                        "inv" => format!("{} {} ({} packages)", v["hostname"], v["os_version"], v["software"].as_array().map_or(0, Vec::len)),
                        "evt" => format!("{}", v["event"]),
                        _ => String::new(),
                    };
                    say(&format!("{} {dev} {kind} {summary}", v["ts"]));
                }
            }
        }
    }
    let _ = client.drain().await;
    Ok(())
}

async fn issue(data_dir: &Path, cmd: IssueCommand, json: bool) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    match cmd {
        IssueCommand::Device {
            tenant,
            device,
            public_key,
            ttl_secs,
        } => {
            let issued = auth
                .issue_device_jwt(&tenant, &device, &public_key, ttl_secs)
                .await?;
            print(json, &issued, || issued.jwt.clone());
        }
        IssueCommand::Technician {
            tenant,
            name,
            devices,
            all_devices,
            ttl_secs,
            out,
        } => {
            if out.exists() {
                anyhow::bail!(
                    "{} exists; choose another --out (creds files are never overwritten)",
                    out.display()
                );
            }
            let scope = if all_devices {
                TechnicianScope::AllDevices
            } else {
                TechnicianScope::Devices(devices)
            };
            let c = auth
                .issue_technician_creds(&tenant, &name, &scope, ttl_secs)
                .await?;
            keystore::write_new_private(&out, c.creds.expose().as_bytes())?;
            print(
                json,
                &serde_json::json!({"creds_file": out, "user": c.user, "expires_at": c.expires_at}),
                || {
                    format!(
                        "Wrote {} (user {}, expires at {}).",
                        out.display(),
                        c.user,
                        c.expires_at
                    )
                },
            );
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Checks every active tenant's account on the server and re-pushes any that is missing or
/// stale (after a server was rebuilt, say).
pub async fn reconcile(auth: &Authority) -> anyhow::Result<usize> {
    let mut repaired = 0;
    for r in auth.tenants().await? {
        if r.state == crate::tenant::TenantState::Creating
            && r.created_at < wegweiser_shared::time::now() - ABANDONED_AFTER_SECS
        {
            tracing::warn!(tenant = %r.id, "Removing a tenant whose creation was interrupted.");
            auth.abandon_creation(&r).await?;
            continue;
        }
        if r.state != crate::tenant::TenantState::Active {
            tracing::warn!(tenant = %r.id, state = ?r.state, "Tenant is not active; an operation on it was interrupted.");
            continue;
        }
        if auth.verify_applied(&r).await.is_err() {
            auth.sync_tenant(&r.id).await?;
            repaired += 1;
            tracing::info!(tenant = %r.id, "Re-pushed account JWT.");
        }
    }
    Ok(repaired)
}

/// A device whose last heartbeat is younger than this counts as online (three default intervals).
pub const ONLINE_WITHIN_SECS: i64 = 90;

/// A tenant still `creating` after this long was interrupted (a crash) and is removed.
pub const ABANDONED_AFTER_SECS: i64 = 300;

/// How often `serve` checks that nats-server holds every tenant's current account.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);

async fn serve(data_dir: &Path) -> anyhow::Result<()> {
    let auth = Authority::open(data_dir).await?;
    let repaired = reconcile(&auth).await?;
    crate::cli_users::bootstrap(&auth, data_dir).await?;
    let tasks = start_service(&auth, &crate::trust::root_dir(data_dir)).await?;
    tracing::info!(
        nats = %auth.config().nats_url,
        repaired,
        "Control plane serving."
    );
    shutdown_signal().await;
    tracing::info!("Shutting down.");
    stop_service(tasks).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), auth.close()).await;
    Ok(())
}

/// The running parts of the service, stopped by [`stop_service`].
#[derive(Debug)]
pub struct ServiceTasks {
    stop: tokio::sync::watch::Sender<bool>,
    http: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the renewal and trust responders, the telemetry ingest, the retention sweeper (at
/// once, then every [`crate::retention::SWEEP_INTERVAL`]), the trust driver (signing with the
/// root keys in `root_dir`), the HTTPS server (when configured) and the reconciler. Creates the
/// first command keyset if there is none.
pub async fn start_service(auth: &Authority, root_dir: &Path) -> anyhow::Result<ServiceTasks> {
    if auth.trust_bootstrap(root_dir).await? {
        tracing::info!("Created the first command keyset.");
    }
    // Devices and tokens labelled before organizations and groups were objects.
    auth.migrate_hierarchy().await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let a = auth.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::service::run_trust_responder(a).await {
            tracing::error!(error = %e, "The trust responder stopped.");
        }
    }));
    let (a, dir) = (auth.clone(), root_dir.to_owned());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::service::run_trust_driver(a, dir).await {
            tracing::error!(error = %e, "The trust driver stopped.");
        }
    }));
    let mut http_task = None;
    let a = auth.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::service::run_renewals(a).await {
            tracing::error!(error = %e, "The renewal responder stopped.");
        }
    }));
    let a = auth.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = crate::ingest::run(a).await {
            tracing::error!(error = %e, "The telemetry ingest stopped.");
        }
    }));
    if let Some(http) = auth.config().http.clone() {
        let state = crate::http::AppState::new(
            auth.clone(),
            crate::api::DeviceIndex::start(auth).await?,
            root_dir.to_owned(),
        );
        let mut rx = rx.clone();
        // Bind now so a port conflict is an error of `serve`, not a log line.
        let probe = std::net::TcpListener::bind(http.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", http.listen))?;
        drop(probe);
        http_task = Some(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::http::serve(state, &http, shutdown).await {
                tracing::error!(error = %e, "The HTTPS server stopped.");
            }
        }));
    }
    let sweeper = auth.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::retention::SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = sweeper.sweep_retention(std::time::SystemTime::now()).await {
                tracing::warn!(error = %e, "Retention sweep failed; retrying later.");
            }
        }
    }));
    let repairer = auth.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = reconcile(&repairer).await {
                tracing::warn!(error = %e, "Reconciling tenant accounts failed; retrying later.");
            }
        }
    }));
    Ok(ServiceTasks {
        stop,
        http: http_task,
        tasks,
    })
}

/// Stops what [`start_service`] started (HTTPS drains for up to 5 s).
pub async fn stop_service(t: ServiceTasks) {
    let _ = t.stop.send(true);
    if let Some(http) = t.http {
        let _ = tokio::time::timeout(Duration::from_secs(6), http).await;
    }
    for task in t.tasks {
        task.abort();
    }
}

/// Creates the platform operator on the first start of the demo and returns its generated
/// password to show once (the password file is removed: the banner is where it is shown).
async fn demo_admin_password(auth: &Authority, data_dir: &Path) -> anyhow::Result<Option<String>> {
    let Some(boot) = auth.bootstrap_admin(data_dir).await? else {
        return Ok(None);
    };
    let Some(file) = boot.password_file else {
        // It came from WEGWEISER_ADMIN_PASSWORD: the caller knows it.
        return Ok(None);
    };
    let password = std::fs::read_to_string(&file)?.trim().to_owned();
    std::fs::remove_file(&file)?;
    Ok(Some(password))
}

async fn up(data_dir: &Path, a: UpArgs, json: bool) -> anyhow::Result<()> {
    let binary = nats_server::locate()?;
    let version = nats_server::version(&binary)?;
    nats_server::check_min_version(&version)?;
    if !data_dir.join(crate::config::CONFIG_FILE).exists() {
        let certs = crate::certs::dev(&data_dir.join("certs"), &[])?;
        init::run(&InitOptions {
            data_dir: data_dir.to_owned(),
            nats_host: "127.0.0.1".into(),
            nats_port: a.port,
            monitor_port: None,
            tls: Some(TlsFiles {
                cert: certs.cert,
                key: certs.key,
                ca: certs.ca,
            }),
            server_name: "wegweiser".into(),
            http_port: Some(a.http_port),
            root_threshold: 1,
            root_keys: 1,
        })?;
    }
    let cfg = Config::load(data_dir)?;
    let port = cfg
        .nats_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(a.port);
    let nats_dir = std::path::absolute(data_dir.join("nats"))?;
    let server = NatsServerProcess::start(
        &binary,
        &nats_dir.join("nats-server.conf"),
        port,
        &nats_dir.join("nats-server.log"),
        Duration::from_secs(20),
    )
    .await?;
    let auth = Authority::open(data_dir).await?;
    reconcile(&auth).await?;
    let admin_password = demo_admin_password(&auth, data_dir).await?;
    let tenant = match auth.tenant(&a.tenant).await {
        Ok(t) => t,
        Err(AuthorityError::UnknownTenant(_)) => {
            auth.create_tenant(NewTenant {
                id: a.tenant.clone(),
                name: Some("Demo MSP".into()),
                limits: None,
                retention_days: None,
            })
            .await?
        }
        Err(e) => return Err(e.into()),
    };
    let tasks = start_service(&auth, &crate::trust::root_dir(data_dir)).await?;
    if let Some(h) = &cfg.http {
        crate::demo::wait_listening(h.listen).await?;
    }
    let https = cfg.http.as_ref().map(|h| h.public_url.clone());
    let dashboard = https.as_ref().map(|u| format!("{u}/app/"));
    let agent_binary = crate::demo::agent_binary();
    let agent = match (&agent_binary, a.no_agent) {
        (Some(bin), false) => Some(crate::demo::start(&auth, bin, data_dir, &tenant.id).await?),
        _ => None,
    };
    let dd = data_dir.display();
    let manual = if agent.is_none() {
        let (token, _) = auth
            .create_token(crate::enrollment::NewToken {
                tenant: tenant.id.clone(),
                organization: None,
                group: None,
                ttl_secs: Some(3600),
                max_uses: Some(1),
                label: "wegweiser up".into(),
            })
            .await?;
        let bin = agent_binary
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "target/release/wegweiser-agent".into());
        enroll_command(&auth, token.expose(), &bin)
            .map(|c| format!("{c} --state-dir {dd}/agent\n  {bin} run --state-dir {dd}/agent"))
    } else {
        None
    };
    let login = match &admin_password {
        Some(p) => format!(
            "user admin, password {p}\n  (shown only now; change it after logging in, or set a new one with `wegweiser --data-dir {dd} user set-password admin`)"
        ),
        None => format!(
            "user admin, with the password shown when it was created (forgotten: `wegweiser --data-dir {dd} user set-password admin`)"
        ),
    };
    let agent_line = match &agent {
        Some(ag) => format!(
            "this machine's agent is {} and running (state: {}, log: {})",
            if ag.enrolled_now {
                "enrolled"
            } else {
                "already enrolled"
            },
            ag.state_dir.display(),
            ag.log.display()
        ),
        None => match &manual {
            Some(m) => format!(
                "enroll an agent on this machine (one-time token, valid 1 h), in another terminal:\n  {m}"
            ),
            None => "no agent binary next to wegweiser and no HTTPS listener: no agent".into(),
        },
    };
    print(
        json,
        &serde_json::json!({
            "nats_url": cfg.nats_url,
            "nats_server_version": version,
            "tenant": tenant.id,
            "account": tenant.account,
            "https": https,
            "dashboard": dashboard,
            "admin_user": crate::users::ADMIN_USER,
            "admin_password": admin_password,
            "agent_state_dir": agent.as_ref().map(|a| a.state_dir.display().to_string()),
            "enroll_command": manual,
        }),
        || {
            format!(
                "Wegweiser is up.\n  nats-server {version} at {} (log: {})\n  control plane: {}\n  demo tenant: {} (account {})\n  {agent_line}\n\n\
                 Dashboard: {}\n  {login}\n\n\
                 Devices from the command line: target/release/wegweiser --data-dir {dd} device list --tenant {}\n\n\
                 Press Ctrl-C to stop.",
                cfg.nats_url,
                nats_dir.join("nats-server.log").display(),
                https.as_deref().unwrap_or("(no HTTPS configured)"),
                tenant.id,
                tenant.account,
                dashboard.as_deref().unwrap_or("(no HTTPS configured)"),
                tenant.id,
            )
        },
    );
    shutdown_signal().await;
    tracing::info!("Stopping.");
    if let Some(agent) = agent {
        agent.stop().await;
    }
    stop_service(tasks).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), auth.close()).await;
    server.stop().await;
    Ok(())
}
