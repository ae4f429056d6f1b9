//! `install` / `uninstall` on Windows: a service in the service control manager (SCM) that runs
//! `wegweiser-agent.exe <location flags> service` as LocalSystem, started automatically at boot
//! and restarted 5 s after a failure (including a non-zero exit, reset after a day without one).
//!
//! Under the SCM, `service` runs the same [`crate::run::run`] as `run` does in a console: a Stop
//! or Shutdown control completes the shutdown future that Ctrl-C completes there (the agent
//! spools `agent_stop`, gives delivery the drain grace, drains the connection, records
//! `stopped`). When the device must enroll again (exit 78 elsewhere) the service reports a clean
//! stop so the SCM does not restart it in a loop; `wegweiser-agent status` shows why.
//!
//! Built on Mullvad's `windows-service`; no `unsafe` here (the service entry point ignores its
//! arguments, so the crate's `define_windows_service!`, which reads them unsafely, is not used).

use super::{ServiceError, UnitLocation};
use crate::{paths::Paths, run, store};
use serde::Serialize;
use std::{
    ffi::{OsStr, OsString},
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};
use windows_service::{
    service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    },
    service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle},
    service_dispatcher,
    service_manager::{ServiceManager, ServiceManagerAccess},
};

/// The service's name in the SCM (`sc query WegweiserAgent`).
pub const SERVICE_NAME: &str = "WegweiserAgent";
/// The name shown in `services.msc`.
pub const DISPLAY_NAME: &str = "Wegweiser agent";
const DESCRIPTION: &str = "Connects this device to its MSP's Wegweiser control plane.";
/// How long the SCM is told a stop may take (the drain grace and a margin).
const STOP_WAIT_HINT: Duration = Duration::from_secs(20);
/// `ERROR_SERVICE_DOES_NOT_EXIST`.
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
/// `ERROR_FAILED_SERVICE_CONTROLLER_CONNECT`: not started by the SCM.
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;
/// `ERROR_ACCESS_DENIED`.
const ERROR_ACCESS_DENIED: i32 = 5;
/// `ERROR_INVALID_LEVEL`: a configuration the SCM does not know (Wine: failure actions).
const ERROR_INVALID_LEVEL: i32 = 124;
/// `ERROR_SERVICE_ALREADY_RUNNING`.
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;

/// What `install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The service's name.
    pub service: String,
    /// Whether an existing service was reconfigured.
    pub replaced: bool,
    /// Whether the service was started (not with `--no-start`).
    pub started: bool,
    /// Whether the SCM accepted the restart-on-failure policy (Wine's does not).
    pub restart_on_failure: bool,
    /// The command line the SCM runs.
    pub command_line: String,
}

/// What `uninstall` did.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    /// The service's name.
    pub service: String,
    /// Whether a service was there and is now stopped and deleted.
    pub removed: bool,
    /// The kept enrollment's directories.
    pub enrollment_dirs: Vec<PathBuf>,
}

/// The arguments after the executable: the location flags, then `service`.
pub fn launch_arguments(location: &UnitLocation) -> Vec<OsString> {
    let mut args: Vec<OsString> = match location {
        UnitLocation::System => vec!["--system".into()],
        UnitLocation::StateDir(dir) => vec!["--state-dir".into(), dir.clone().into_os_string()],
    };
    args.push("service".into());
    args
}

fn scm_error(action: &str, e: windows_service::Error) -> ServiceError {
    let denied = matches!(&e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(ERROR_ACCESS_DENIED));
    let detail = match &e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    };
    ServiceError::Scm {
        action: action.to_owned(),
        detail,
        denied,
    }
}

fn winapi_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

/// Creates the service (or reconfigures an existing one) and starts it unless `--no-start`.
pub fn install(opts: &super::InstallOptions) -> Result<InstallReport, ServiceError> {
    if opts.unit_dir.is_some() {
        return Err(ServiceError::Unsupported {
            command: "install --unit-dir",
        });
    }
    let paths = opts.location.paths();
    if !store::is_enrolled(&paths) {
        return Err(ServiceError::NotEnrolled {
            dirs: opts
                .location
                .enrollment_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            flags: match &opts.location {
                UnitLocation::System => "--system".to_owned(),
                UnitLocation::StateDir(d) => format!("--state-dir \"{}\"", d.display()),
            },
        });
    }
    let info = ServiceInfo {
        name: SERVICE_NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: opts.exe.clone(),
        launch_arguments: launch_arguments(&opts.location),
        dependencies: Vec::new(),
        account_name: None, // LocalSystem
        account_password: None,
    };
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| scm_error("cannot open the service control manager", e))?;
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS;
    let (service, replaced) = match manager.open_service(SERVICE_NAME, access) {
        Ok(service) => {
            service
                .change_config(&info)
                .map_err(|e| scm_error("cannot reconfigure the service", e))?;
            (service, true)
        }
        Err(e) if winapi_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => (
            manager
                .create_service(&info, access)
                .map_err(|e| scm_error("cannot create the service", e))?,
            false,
        ),
        Err(e) => return Err(scm_error("cannot open the service", e)),
    };
    service
        .set_description(DESCRIPTION)
        .map_err(|e| scm_error("cannot describe the service", e))?;
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    let policy = service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart.clone(), restart.clone(), restart]),
        })
        // A stop with a non-zero exit code counts as a failure too, not only a crash.
        .and_then(|()| service.set_failure_actions_on_non_crash_failures(true));
    let restart_on_failure = match policy {
        Ok(()) => true,
        // Wine's SCM does not implement failure actions; Windows does.
        Err(e) if winapi_code(&e) == Some(ERROR_INVALID_LEVEL) => {
            tracing::warn!(error = %e, "This service control manager cannot restart services on failure.");
            false
        }
        Err(e) => return Err(scm_error("cannot set the restart policy", e)),
    };
    if opts.start {
        match service.start(&[] as &[&OsStr]) {
            Ok(()) => {}
            Err(e) if winapi_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => {}
            Err(e) => return Err(scm_error("the service is installed but did not start", e)),
        }
    }
    Ok(InstallReport {
        service: SERVICE_NAME.to_owned(),
        replaced,
        started: opts.start,
        restart_on_failure,
        command_line: command_line(&opts.exe, &opts.location),
    })
}

fn command_line(exe: &std::path::Path, location: &UnitLocation) -> String {
    let quote = |s: &OsStr| {
        let s = s.to_string_lossy();
        if s.contains([' ', '\t']) {
            format!("\"{s}\"")
        } else {
            s.into_owned()
        }
    };
    std::iter::once(quote(exe.as_os_str()))
        .chain(launch_arguments(location).iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stops the service (waiting for the agent's graceful shutdown) and deletes it. Keeps the
/// enrollment.
pub fn uninstall(
    unit_dir: Option<&std::path::Path>,
    location: &UnitLocation,
) -> Result<UninstallReport, ServiceError> {
    if unit_dir.is_some() {
        return Err(ServiceError::Unsupported {
            command: "uninstall --unit-dir",
        });
    }
    let report = |removed| UninstallReport {
        service: SERVICE_NAME.to_owned(),
        removed,
        enrollment_dirs: location.enrollment_dirs(),
    };
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| scm_error("cannot open the service control manager", e))?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let service = match manager.open_service(SERVICE_NAME, access) {
        Ok(s) => s,
        Err(e) if winapi_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            return Ok(report(false));
        }
        Err(e) => return Err(scm_error("cannot open the service", e)),
    };
    let status = service
        .query_status()
        .map_err(|e| scm_error("cannot query the service", e))?;
    if status.current_state != ServiceState::Stopped {
        if status.current_state != ServiceState::StopPending {
            service
                .stop()
                .map_err(|e| scm_error("cannot stop the service", e))?;
        }
        let deadline = Instant::now() + STOP_WAIT_HINT + Duration::from_secs(10);
        loop {
            let s = service
                .query_status()
                .map_err(|e| scm_error("cannot query the service", e))?;
            if s.current_state == ServiceState::Stopped {
                break;
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Scm {
                    action: "the service did not stop".to_owned(),
                    detail: format!("still {:?} after {:?}", s.current_state, deadline),
                    denied: false,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    service
        .delete()
        .map_err(|e| scm_error("cannot delete the service", e))?;
    Ok(report(true))
}

/// The paths the service runs with, set before the dispatcher starts.
static SERVICE_PATHS: OnceLock<Paths> = OnceLock::new();
/// How the service's run ended (the SCM's thread sets it, `run_service` returns it).
static SERVICE_RESULT: OnceLock<Result<(), String>> = OnceLock::new();

/// `wegweiser-agent service`: hands this thread to the SCM, which calls [`service_main`] on
/// another thread; returns when the service has stopped. Fails at once when the process was
/// not started by the SCM.
pub fn run_service(paths: Paths) -> Result<(), ServiceError> {
    let _ = SERVICE_PATHS.set(paths);
    service_dispatcher::start(SERVICE_NAME, ffi_service_main).map_err(|e| {
        if winapi_code(&e) == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) {
            ServiceError::Scm {
                action: "`service` is run by the Windows service control manager".to_owned(),
                detail: "not started as a service; use `wegweiser-agent run` in a console"
                    .to_owned(),
                denied: false,
            }
        } else {
            scm_error("cannot start the service dispatcher", e)
        }
    })?;
    match SERVICE_RESULT.get() {
        Some(Err(e)) => Err(ServiceError::Scm {
            action: "the service stopped".to_owned(),
            detail: e.clone(),
            denied: false,
        }),
        _ => Ok(()),
    }
}

/// The entry point the SCM calls (on its own thread). Its arguments (the start parameters) are
/// not used: the location comes from the service's command line.
extern "system" fn ffi_service_main(_argc: u32, _argv: *mut *mut u16) {
    let result = service_main();
    if let Err(e) = &result {
        tracing::error!(error = %e, "The service stopped with an error.");
    }
    let _ = SERVICE_RESULT.set(result);
}

fn status(state: ServiceState, exit: ServiceExitCode, wait_hint: Duration) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: exit,
        checkpoint: 0,
        wait_hint,
        process_id: None,
    }
}

fn service_main() -> Result<(), String> {
    let paths = SERVICE_PATHS
        .get()
        .cloned()
        .ok_or_else(|| "no paths".to_owned())?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let stop = stop.clone();
        move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                // A stored permit: a stop that comes before the agent waits is not lost.
                stop.notify_one();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        }
    };
    let handle: ServiceStatusHandle = service_control_handler::register(SERVICE_NAME, handler)
        .map_err(|e| format!("cannot register the control handler: {e}"))?;
    let set = |s: ServiceStatus| {
        if let Err(e) = handle.set_service_status(s) {
            tracing::warn!(error = %e, "Cannot report the service status.");
        }
    };
    set(status(
        ServiceState::Running,
        ServiceExitCode::Win32(0),
        Duration::ZERO,
    ));
    let outcome = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Err(e) => Err((e.to_string(), 1)),
        Ok(rt) => rt.block_on(async {
            loop {
                let stopped = run::run(&paths, async {
                    stop.notified().await;
                    tracing::info!("Stop requested by the service control manager.");
                    set(status(
                        ServiceState::StopPending,
                        ServiceExitCode::Win32(0),
                        STOP_WAIT_HINT,
                    ));
                })
                .await
                .map_err(|e| (e.to_string(), crate::cli::run_exit_code(&e)))?;
                // A `restart` command: run again in this process, as `run` does.
                if stopped != run::Stopped::Restart {
                    return Ok(());
                }
            }
        }),
    };
    let (exit, result) = match outcome {
        Ok(()) => (ServiceExitCode::Win32(0), Ok(())),
        Err((message, crate::cli::EXIT_REENROLL)) => {
            // A clean stop: restarting cannot help (see the module docs).
            tracing::error!(error = %message, "The device must be enrolled again; the service stops.");
            (ServiceExitCode::Win32(0), Ok(()))
        }
        Err((message, code)) => (
            ServiceExitCode::ServiceSpecific(u32::from(code)),
            Err(message),
        ),
    };
    set(status(ServiceState::Stopped, exit, Duration::ZERO));
    result
}

impl InstallReport {
    /// The text answer of `install`.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} the service {} ({DISPLAY_NAME}): LocalSystem, automatic start, restart on failure\n  command line: {}\n",
            if self.replaced {
                "Reconfigured"
            } else {
                "Created"
            },
            self.service,
            self.command_line
        );
        if self.started {
            s.push_str(&format!(
                "The service is started: sc query {}",
                self.service
            ));
            if self.replaced {
                s.push_str(&format!(
                    "\nIf it was already running, restart it to use the new settings: sc stop {0} && sc start {0}",
                    self.service
                ));
            }
        } else {
            s.push_str(&format!(
                "Not started. Start it with: sc start {}",
                self.service
            ));
        }
        s
    }
}

impl UninstallReport {
    /// The text answer of `uninstall`.
    pub fn to_text(&self) -> String {
        let dirs: Vec<String> = self
            .enrollment_dirs
            .iter()
            .map(|d| format!("\"{}\"", d.display()))
            .collect();
        format!(
            "{}\nThe enrollment is kept. To remove it too, delete its directories: rmdir /s /q {}",
            if self.removed {
                format!("Stopped and removed the service {}.", self.service)
            } else {
                format!("No service {} is installed.", self.service)
            },
            dirs.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_arguments_name_the_location_then_service() {
        assert_eq!(
            launch_arguments(&UnitLocation::System),
            vec![OsString::from("--system"), OsString::from("service")]
        );
        let dir = PathBuf::from(r"C:\Wegweiser State");
        assert_eq!(
            launch_arguments(&UnitLocation::StateDir(dir.clone())),
            vec![
                OsString::from("--state-dir"),
                dir.clone().into_os_string(),
                OsString::from("service")
            ]
        );
        assert_eq!(
            command_line(
                std::path::Path::new(r"C:\Program Files\Wegweiser\wegweiser-agent.exe"),
                &UnitLocation::StateDir(dir)
            ),
            r#""C:\Program Files\Wegweiser\wegweiser-agent.exe" --state-dir "C:\Wegweiser State" service"#
        );
    }

    #[test]
    fn running_outside_the_scm_is_refused() {
        let e = run_service(Paths::in_dir(std::env::temp_dir())).unwrap_err();
        assert!(e.to_string().contains("use `wegweiser-agent run`"), "{e}");
    }
}
