//! The `wegweiser-agent` command line. `main.rs` parses [`Cli`] and calls [`main`].
//!
//! Exit codes: 0 success; 1 other failures; 64 bad usage or configuration; 69 control plane
//! unreachable or failing; 76 unexpected answer; 77 enrollment refused (or, for `install` and
//! `uninstall` on Windows, no right to manage services); 78 not enrolled, or the
//! device must enroll again (revoked, unknown, or its key is no longer the device's).

use crate::{
    enroll::{self, EnrollError, EnrollOptions},
    paths::{ENV_STATE_DIR, Location, Paths},
    run::{self, RunError},
    service::{self, InstallOptions, ServiceError, UnitLocation},
    status,
    store::StoreError,
};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::{path::PathBuf, process::ExitCode};
use wegweiser_shared::secret::SecretString;

/// Exit code: bad usage or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code: the control plane is unreachable or failing (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code: the control plane answered something unexpected (`EX_PROTOCOL`).
pub const EXIT_PROTOCOL: u8 = 76;
/// Exit code: the control plane refused the enrollment (`EX_NOPERM`).
pub const EXIT_REFUSED: u8 = 77;
/// Exit code: not enrolled, or the device must enroll again (`EX_CONFIG`).
pub const EXIT_REENROLL: u8 = 78;

/// Environment variable that can carry the enrollment token instead of `--token` (keeps it out
/// of the process list).
pub const ENV_TOKEN: &str = "WEGWEISER_ENROLL_TOKEN";

/// Wegweiser agent: connects this device to its MSP's Wegweiser control plane.
#[derive(Debug, Parser)]
#[command(name = "wegweiser-agent", version, about)]
pub struct Cli {
    /// Keep configuration, secrets and state in this one directory.
    #[arg(long, global = true, env = ENV_STATE_DIR, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use the machine-wide locations (/etc/wegweiser and /var/lib/wegweiser; %ProgramData%\Wegweiser on Windows).
    #[arg(long, global = true)]
    pub system: bool,
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
    /// Enroll this device with an enrollment token (generates its key locally).
    Enroll(EnrollArgs),
    /// Run the agent: stay connected, send reports, renew credentials, execute signed commands (until Ctrl-C/SIGTERM).
    Run,
    /// Show enrollment, credential expiry and connection state.
    Status,
    /// Install a service that runs this executable at boot (Linux: systemd, as root; Windows:
    /// the service control manager, as Administrator).
    Install(InstallArgs),
    /// Stop and remove the service (keeps the enrollment).
    Uninstall(UninstallArgs),
    /// Run as a Windows service (what the service control manager starts; not for consoles).
    #[command(hide = true)]
    Service,
}

/// `install` options. The service uses the system location unless `--state-dir` is given.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Write the unit here instead of /etc/systemd/system (then systemctl is not run; Linux only).
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Only write the unit (Linux) or create the service (Windows): do not start it.
    #[arg(long)]
    pub no_start: bool,
}

/// `uninstall` options.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove the unit from here instead of /etc/systemd/system (then systemctl is not run; Linux only).
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
}

/// `enroll` options.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Control-plane base URL (https://…).
    #[arg(long)]
    pub url: String,
    /// Enrollment token (wgt_…); or set WEGWEISER_ENROLL_TOKEN.
    #[arg(long, env = ENV_TOKEN, hide_env_values = true, value_parser = parse_secret)]
    pub token: SecretString,
    /// Trust only this CA certificate (PEM) for the control plane (default: public WebPKI roots).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Replace an existing enrollment.
    #[arg(long)]
    pub force: bool,
    /// Use this machine id instead of the detected one.
    #[arg(long)]
    pub machine_id: Option<String>,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::new(s.to_owned()))
}

/// Runs a parsed command line: sets up logging, runs the command, maps errors to exit codes.
pub fn main(cli: Cli) -> ExitCode {
    let long_running = matches!(cli.command, Command::Run);
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(e) = e.downcast_ref::<EnrollError>() {
        return match e {
            EnrollError::AlreadyEnrolled { .. }
            | EnrollError::BadUrl { .. }
            | EnrollError::BadToken { .. }
            | EnrollError::Facts { .. }
            | EnrollError::CaFile { .. } => EXIT_USAGE,
            EnrollError::Unreachable { .. } => EXIT_UNAVAILABLE,
            EnrollError::AgentRunning { .. } => 1,
            EnrollError::Refused { status, .. } if *status >= 500 => EXIT_UNAVAILABLE,
            EnrollError::Refused { .. } => EXIT_REFUSED,
            EnrollError::BadResponse { .. } | EnrollError::Trust { .. } => EXIT_PROTOCOL,
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<RunError>() {
        return run_exit_code(e);
    }
    if let Some(e) = e.downcast_ref::<ServiceError>() {
        return match e {
            ServiceError::Unsupported { .. } | ServiceError::BadPath { .. } => EXIT_USAGE,
            ServiceError::NotEnrolled { .. } => EXIT_REENROLL,
            ServiceError::Systemctl { missing: true, .. } => EXIT_UNAVAILABLE,
            ServiceError::Scm { denied: true, .. } => EXIT_REFUSED,
            _ => 1,
        };
    }
    if e.downcast_ref::<crate::paths::PathsError>().is_some() {
        return EXIT_USAGE;
    }
    1
}

/// The exit code of `run` ending with `e` (also what the Windows service reports).
pub fn run_exit_code(e: &RunError) -> u8 {
    match e {
        RunError::ReenrollRequired { .. } => EXIT_REENROLL,
        RunError::Store(s) => store_exit_code(s),
        RunError::Connect(_) => EXIT_USAGE,
        RunError::AlreadyRunning { .. } | RunError::Lock { .. } | RunError::Spool(_) => 1,
    }
}

fn store_exit_code(e: &StoreError) -> u8 {
    match e {
        StoreError::NotEnrolled { .. }
        | StoreError::Missing { .. }
        | StoreError::InvalidSeed { .. }
        | StoreError::InvalidJwt { .. } => EXIT_REENROLL,
        StoreError::Io { .. } => 1,
        _ => EXIT_USAGE,
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the answer as JSON: {e}"),
        }
    } else {
        println!("{}", text());
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let location = Location::from_flags(cli.state_dir, cli.system)?;
    let json = cli.json;
    match cli.command {
        Command::Install(a) => return install(&location, a, json),
        Command::Uninstall(a) => return uninstall(&location, a, json),
        _ => {}
    }
    let paths = Paths::resolve(&location)?;
    match cli.command {
        Command::Enroll(a) => {
            let opts = EnrollOptions {
                url: a.url,
                token: a.token,
                ca_file: a.ca_file,
                force: a.force,
                machine_id: a.machine_id,
            };
            let s = enroll::enroll(&paths, &opts)?;
            let now = wegweiser_shared::time::now();
            print(json, &s, || {
                let expiry = match s.jwt_expires_at {
                    Some(e) => format!("{e} (in {})", status::human(e.saturating_sub(now))),
                    None => "never".to_owned(),
                };
                format!(
                    "Enrolled{}.\n  device id:   {}\n  tenant:      {}\n  credentials: expire at {expiry}, renewed automatically by `run`\n  config:      {}\n\nStart the agent with: wegweiser-agent{} run",
                    if s.reenrolled {
                        " again (this machine was known)"
                    } else {
                        ""
                    },
                    s.device_id,
                    s.tenant,
                    s.config_file.display(),
                    location_flags(&location, &paths),
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            // A signed `restart` command stops the agent the normal way; it then starts again
            // here, in the same process (a service manager would not restart a clean exit).
            while rt.block_on(run::run(&paths, shutdown_signal()))? == run::Stopped::Restart {
                tracing::info!("Starting again.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let now = wegweiser_shared::time::now();
            let r = status::report(&paths, now);
            print(json, &r, || r.to_text(now));
            Ok(ExitCode::SUCCESS)
        }
        Command::Service => {
            service_main(paths)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(_) | Command::Uninstall(_) => Ok(ExitCode::SUCCESS),
    }
}

/// The service's location: `--state-dir DIR` (absolute), else the system location.
fn unit_location(location: &Location) -> UnitLocation {
    match location {
        Location::Dir(dir) => {
            UnitLocation::StateDir(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()))
        }
        Location::System | Location::User => UnitLocation::System,
    }
}

#[cfg(windows)]
fn service_main(paths: Paths) -> Result<(), ServiceError> {
    service::windows::run_service(paths)
}

#[cfg(not(windows))]
fn service_main(_paths: Paths) -> Result<(), ServiceError> {
    Err(ServiceError::Unsupported {
        command: "service (Windows only; use `run`)",
    })
}

#[cfg(windows)]
fn install(location: &Location, a: InstallArgs, json: bool) -> anyhow::Result<ExitCode> {
    let r = service::windows::install(&InstallOptions {
        exe: service::current_exe()?,
        location: unit_location(location),
        unit_dir: a.unit_dir,
        start: !a.no_start,
    })?;
    print(json, &r, || r.to_text());
    Ok(ExitCode::SUCCESS)
}

#[cfg(windows)]
fn uninstall(location: &Location, a: UninstallArgs, json: bool) -> anyhow::Result<ExitCode> {
    let r = service::windows::uninstall(a.unit_dir.as_deref(), &unit_location(location))?;
    print(json, &r, || r.to_text());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(windows))]
fn install(location: &Location, a: InstallArgs, json: bool) -> anyhow::Result<ExitCode> {
    let r = service::install(&InstallOptions {
        exe: service::current_exe()?,
        location: unit_location(location),
        unit_dir: a.unit_dir,
        start: !a.no_start,
    })?;
    print(json, &r, || r.to_text());
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(windows))]
fn uninstall(location: &Location, a: UninstallArgs, json: bool) -> anyhow::Result<ExitCode> {
    let r = service::uninstall(a.unit_dir.as_deref(), &unit_location(location))?;
    print(json, &r, || r.to_text());
    Ok(ExitCode::SUCCESS)
}

fn location_flags(location: &Location, paths: &Paths) -> String {
    match location {
        Location::Dir(_) => format!(" --state-dir {}", paths.state_dir().display()),
        Location::System => " --system".to_owned(),
        Location::User => String::new(),
    }
}

/// Completes on Ctrl-C, or SIGTERM on Unix: the one shutdown path of `run` (the Windows
/// service's Stop control completes the same way, see [`crate::service`]).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C stops the agent.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "wegweiser-agent",
            "--state-dir",
            "/tmp/a",
            "enroll",
            "--url",
            "https://cp",
            "--token",
            "wgt_secret",
            "--ca-file",
            "/tmp/ca.pem",
            "--force",
            "--machine-id",
            "m1",
            "--json",
        ])
        .unwrap();
        assert_eq!(
            cli.state_dir.as_deref(),
            Some(std::path::Path::new("/tmp/a"))
        );
        assert!(cli.json);
        match &cli.command {
            Command::Enroll(a) => {
                assert_eq!(a.token.expose(), "wgt_secret");
                assert!(a.force);
                assert_eq!(a.machine_id.as_deref(), Some("m1"));
            }
            other => panic!("{other:?}"),
        }
        // The token never shows in Debug output.
        assert!(!format!("{cli:?}").contains("wgt_secret"));
        for args in [
            vec!["wegweiser-agent", "run", "--system"],
            vec!["wegweiser-agent", "status", "--json"],
            vec![
                "wegweiser-agent",
                "install",
                "--unit-dir",
                "/tmp/u",
                "--no-start",
            ],
            vec!["wegweiser-agent", "--state-dir", "/tmp/a", "install"],
            vec!["wegweiser-agent", "uninstall", "--unit-dir", "/tmp/u"],
        ] {
            assert!(Cli::try_parse_from(args).is_ok());
        }
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let e = anyhow::Error::from(RunError::ReenrollRequired {
            code: "revoked".into(),
            message: "m".into(),
        });
        assert_eq!(exit_code(&e), EXIT_REENROLL);
        let e = anyhow::Error::from(RunError::ReenrollRequired {
            code: "stale_key".into(),
            message: "m".into(),
        });
        assert_eq!(exit_code(&e), EXIT_REENROLL);
        let e = anyhow::Error::from(EnrollError::Refused {
            status: 403,
            code: "c".into(),
            message: "m".into(),
        });
        assert_eq!(exit_code(&e), EXIT_REFUSED);
        let e = anyhow::Error::from(RunError::Store(StoreError::NotEnrolled {
            path: "p".into(),
        }));
        assert_eq!(exit_code(&e), EXIT_REENROLL);
        let e = anyhow::Error::from(ServiceError::Unsupported { command: "install" });
        assert_eq!(exit_code(&e), EXIT_USAGE);
        let e = anyhow::Error::from(crate::paths::PathsError::Conflict);
        assert_eq!(exit_code(&e), EXIT_USAGE);
    }
}
