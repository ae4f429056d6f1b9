//! `install` / `uninstall`: a systemd unit that runs `wegweiser-agent run` at boot (Linux), or a
//! Windows service (`windows`, built on Windows only: the service control manager, LocalSystem,
//! automatic start, restart on failure; see `agent/src/service/windows.rs`).
//!
//! Nothing is copied: the unit's `ExecStart` is the absolute path of the running executable, so
//! install the binary where it should stay first. `install` needs an existing enrollment (the
//! system location, or `--state-dir DIR`); `uninstall` never deletes it.
//!
//! With the default unit directory, `install` runs `systemctl daemon-reload` and
//! `systemctl enable --now`, `uninstall` runs `systemctl disable --now` and `daemon-reload`. A
//! custom `--unit-dir` (or `--no-start`) only writes or removes the file.

#[cfg(windows)]
pub mod windows;

use crate::{paths::Paths, store};
use serde::Serialize;
use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    process::Command,
};

/// The unit's file name.
pub const UNIT_NAME: &str = "wegweiser-agent.service";
/// Where units go unless `--unit-dir` says otherwise.
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// Where the service keeps its enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitLocation {
    /// `--system`: /etc/wegweiser and /var/lib/wegweiser.
    System,
    /// `--state-dir DIR` (absolute).
    StateDir(PathBuf),
}

impl UnitLocation {
    /// The agent's paths for this location on this operating system.
    pub fn paths(&self) -> Paths {
        match self {
            Self::System => {
                Paths::system_for(std::env::consts::OS, std::env::var_os("ProgramData"))
            }
            Self::StateDir(dir) => Paths::in_dir(dir.clone()),
        }
    }

    /// The directories holding the enrollment (what to delete to remove it).
    pub fn enrollment_dirs(&self) -> Vec<PathBuf> {
        let p = self.paths();
        if p.config_dir() == p.state_dir() {
            vec![p.state_dir().to_owned()]
        } else {
            vec![p.config_dir().to_owned(), p.state_dir().to_owned()]
        }
    }

    fn flags(&self) -> String {
        match self {
            Self::System => "--system".to_owned(),
            Self::StateDir(dir) => format!("--state-dir {}", quote(dir, true)),
        }
    }
}

/// Why `install` or `uninstall` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Not Linux or Windows, or an option of the other one.
    #[error("{command} is only available on Linux with systemd in this version")]
    Unsupported {
        /// `install` or `uninstall`.
        command: &'static str,
    },
    /// No enrollment at the location the unit would use.
    #[error(
        "not enrolled at {}: enroll first (wegweiser-agent {flags} enroll --url … --token …), then install",
        dirs.join(" and ")
    )]
    NotEnrolled {
        /// The directories looked at.
        dirs: Vec<String>,
        /// The location flags to enroll with.
        flags: String,
    },
    /// A path that cannot go into a unit file.
    #[error("cannot use {path:?} in a systemd unit: {reason}")]
    BadPath {
        /// The path.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },
    /// `std::env::current_exe` failed.
    #[error("cannot find the agent's own executable: {0}")]
    CurrentExe(#[source] io::Error),
    /// Writing or removing the unit file failed.
    #[error("cannot {action} {path}: {source}{}", if source.kind() == io::ErrorKind::PermissionDenied { " (run as root)" } else { "" })]
    Io {
        /// `write` or `remove`.
        action: &'static str,
        /// The unit file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The Windows service control manager refused or failed.
    #[error("{action}: {detail}{}", if *denied { " (run as Administrator)" } else { "" })]
    Scm {
        /// What was being done.
        action: String,
        /// The system's answer.
        detail: String,
        /// Whether access was denied.
        denied: bool,
    },
    /// `systemctl` is missing or failed.
    #[error("`systemctl {args}` {detail}\n{todo}")]
    Systemctl {
        /// Its arguments.
        args: String,
        /// What went wrong.
        detail: String,
        /// What the file's state is and what to run by hand.
        todo: String,
        /// Whether `systemctl` was not found at all.
        missing: bool,
    },
}

/// What `install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The unit file written.
    pub unit_file: PathBuf,
    /// Whether it replaced an existing unit file.
    pub replaced: bool,
    /// Whether `systemctl enable --now` ran.
    pub started: bool,
    /// The command line systemd runs.
    pub exec_start: String,
}

/// What `uninstall` did.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    /// The unit file.
    pub unit_file: PathBuf,
    /// Whether a unit file was there and is now removed.
    pub removed: bool,
    /// Whether `systemctl` ran (default unit directory only).
    pub systemctl: bool,
    /// The kept enrollment's directories.
    pub enrollment_dirs: Vec<PathBuf>,
}

/// `install` options.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The agent executable for `ExecStart` (absolute).
    pub exe: PathBuf,
    /// Where the enrollment is.
    pub location: UnitLocation,
    /// `--unit-dir`; `None` is [`DEFAULT_UNIT_DIR`].
    pub unit_dir: Option<PathBuf>,
    /// `false` with `--no-start`.
    pub start: bool,
}

/// The text of `wegweiser-agent.service` for `exe` and `location`.
pub fn render_unit(exe: &Path, location: &UnitLocation) -> String {
    let exec_start = exec_start(exe, location);
    let (rw, protect_home) = match location {
        UnitLocation::System => {
            let p = location.paths();
            (
                format!(
                    "{} {}",
                    quote(p.state_dir(), false),
                    quote(p.config_dir(), false)
                ),
                "ProtectHome=read-only\n",
            )
        }
        // The state directory may be under /home: leave home directories alone.
        UnitLocation::StateDir(dir) => (quote(dir, false), ""),
    };
    format!(
        "# Written by `wegweiser-agent install`; remove with `wegweiser-agent uninstall`.
[Unit]
Description=Wegweiser agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# Exit status 78: the device must enroll again (revoked, unknown or stale key); restarting
# cannot help, so systemd must not loop.
RestartPreventExitStatus=78
User=root
# SIGTERM takes the agent's graceful shutdown path (the same as Ctrl-C): it spools agent_stop,
# gives delivery a few seconds to empty the spool, drains the connection and records `stopped`.
KillSignal=SIGTERM
TimeoutStopSec=15
NoNewPrivileges=yes
ProtectSystem=full
{protect_home}ReadWritePaths={rw}
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"
    )
}

fn exec_start(exe: &Path, location: &UnitLocation) -> String {
    format!("{} {} run", quote(exe, true), location.flags())
}

/// `path` as one word of a unit setting: `%` as `%%` (specifiers), `$` as `$$` in command lines
/// (variables), and in double quotes with C escapes when it has whitespace, quotes or
/// backslashes.
fn quote(path: &Path, command_line: bool) -> String {
    let s = path.to_string_lossy();
    let needs_quotes = s
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' if command_line => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    if needs_quotes {
        format!("\"{out}\"")
    } else {
        out
    }
}

/// `path` for a shell command line shown to the user (single quotes when needed).
fn shell_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':'))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn check_path(path: &Path) -> Result<(), ServiceError> {
    let bad = |reason| {
        Err(ServiceError::BadPath {
            path: path.to_owned(),
            reason,
        })
    };
    match path.to_str() {
        None => bad("it is not valid UTF-8"),
        Some(_) if !path.is_absolute() => bad("it is not absolute"),
        Some(s) if s.chars().any(char::is_control) => bad("it contains control characters"),
        Some(_) => Ok(()),
    }
}

fn ensure_supported(command: &'static str) -> Result<(), ServiceError> {
    if cfg!(target_os = "linux") {
        Ok(())
    } else {
        Err(ServiceError::Unsupported { command })
    }
}

/// The unit directory and whether systemctl applies to it (only the default one).
fn unit_dir(dir: Option<&Path>) -> (PathBuf, bool) {
    match dir {
        Some(d) if d != Path::new(DEFAULT_UNIT_DIR) => (d.to_owned(), false),
        _ => (PathBuf::from(DEFAULT_UNIT_DIR), true),
    }
}

/// The absolute path of the running executable.
pub fn current_exe() -> Result<PathBuf, ServiceError> {
    std::env::current_exe().map_err(ServiceError::CurrentExe)
}

/// Writes the unit (atomically, 0644) and, for the default unit directory and unless
/// `--no-start`, reloads systemd and enables and starts the service.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, ServiceError> {
    ensure_supported("install")?;
    let paths = opts.location.paths();
    if !store::is_enrolled(&paths) {
        return Err(ServiceError::NotEnrolled {
            dirs: opts
                .location
                .enrollment_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            flags: opts.location.flags(),
        });
    }
    check_path(&opts.exe)?;
    if let UnitLocation::StateDir(dir) = &opts.location {
        check_path(dir)?;
    }
    let (dir, use_systemctl) = unit_dir(opts.unit_dir.as_deref());
    let file = dir.join(UNIT_NAME);
    let replaced = file.exists();
    let io_err = |source| ServiceError::Io {
        action: "write",
        path: file.clone(),
        source,
    };
    crate::platform::write_atomic(&file, render_unit(&opts.exe, &opts.location).as_bytes())
        .map_err(io_err)?;
    // The umask may have narrowed the mode of the new file; systemd needs it world-readable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).map_err(io_err)?;
    }
    let started = opts.start && use_systemctl;
    if started {
        let todo = format!(
            "The unit file {} is written; start the service with: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}",
            file.display()
        );
        systemctl(&["daemon-reload"], &todo)?;
        systemctl(&["enable", "--now", UNIT_NAME], &todo)?;
    }
    Ok(InstallReport {
        unit_file: file,
        replaced,
        started,
        exec_start: exec_start(&opts.exe, &opts.location),
    })
}

/// Disables and stops the service (default unit directory only; "not loaded" is fine), removes
/// the unit file and reloads systemd. Keeps the enrollment.
pub fn uninstall(
    unit_dir_flag: Option<&Path>,
    location: &UnitLocation,
) -> Result<UninstallReport, ServiceError> {
    ensure_supported("uninstall")?;
    let (dir, use_systemctl) = unit_dir(unit_dir_flag);
    let file = dir.join(UNIT_NAME);
    if use_systemctl {
        let todo = format!(
            "Nothing was removed; stop the service and remove it by hand: systemctl disable --now {UNIT_NAME} && rm {} && systemctl daemon-reload",
            file.display()
        );
        match systemctl(&["disable", "--now", UNIT_NAME], &todo) {
            Err(ServiceError::Systemctl { detail, .. })
                if detail.contains("not loaded") || detail.contains("does not exist") => {}
            other => other?,
        }
    }
    let removed = match std::fs::remove_file(&file) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(ServiceError::Io {
                action: "remove",
                path: file,
                source,
            });
        }
    };
    if use_systemctl {
        let todo = format!(
            "The service is stopped and {} removed; finish with: systemctl daemon-reload",
            file.display()
        );
        systemctl(&["daemon-reload"], &todo)?;
    }
    Ok(UninstallReport {
        unit_file: file,
        removed,
        systemctl: use_systemctl,
        enrollment_dirs: location.enrollment_dirs(),
    })
}

fn systemctl(args: &[&str], todo: &str) -> Result<(), ServiceError> {
    let fail = |detail: String, missing| ServiceError::Systemctl {
        args: args.join(" "),
        detail,
        todo: todo.to_owned(),
        missing,
    };
    match Command::new("systemctl").args(args).output() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(fail(
            "failed: systemctl not found (is this a systemd system?)".to_owned(),
            true,
        )),
        Err(e) => Err(fail(format!("could not run: {e}"), false)),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut detail = format!("failed ({})", out.status);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !stderr.trim().is_empty() {
                let _ = write!(detail, ": {}", stderr.trim());
            }
            Err(fail(detail, false))
        }
    }
}

impl InstallReport {
    /// The text answer of `install`.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} {}\n  ExecStart={}\n",
            if self.replaced { "Replaced" } else { "Wrote" },
            self.unit_file.display(),
            self.exec_start
        );
        if self.started {
            s.push_str(&format!(
                "The service is enabled and started: systemctl status {UNIT_NAME}"
            ));
            if self.replaced {
                s.push_str(&format!(
                    "\nIf it was already running, restart it to use the new unit: systemctl restart {UNIT_NAME}"
                ));
            }
        } else {
            s.push_str(&format!(
                "Not started. Start it with: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}"
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
            .map(|d| shell_quote(d))
            .collect();
        format!(
            "{}\nThe enrollment is kept. To remove it too, delete its directories: rm -r {}",
            if self.removed {
                format!("Removed {}.", self.unit_file.display())
            } else {
                format!("No unit file at {}.", self.unit_file.display())
            },
            dirs.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn system_unit() {
        let unit = render_unit(
            Path::new("/usr/local/bin/wegweiser-agent"),
            &UnitLocation::System,
        );
        assert!(
            unit.contains("\nExecStart=/usr/local/bin/wegweiser-agent --system run\n"),
            "{unit}"
        );
        for line in [
            "[Unit]",
            "Description=Wegweiser agent",
            "After=network-online.target",
            "Wants=network-online.target",
            "[Service]",
            "Type=simple",
            "Restart=on-failure",
            "RestartSec=5",
            "RestartPreventExitStatus=78",
            "User=root",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=15",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
            "ProtectHome=read-only",
            "ReadWritePaths=/var/lib/wegweiser /etc/wegweiser",
            "PrivateTmp=yes",
            "[Install]",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}:\n{unit}");
        }
    }

    #[test]
    fn state_dir_unit() {
        let unit = render_unit(
            Path::new("/opt/wg/wegweiser-agent"),
            &UnitLocation::StateDir("/srv/agent".into()),
        );
        assert!(unit.contains("\nExecStart=/opt/wg/wegweiser-agent --state-dir /srv/agent run\n"));
        assert!(unit.contains("\nReadWritePaths=/srv/agent\n"));
        assert!(!unit.contains("ProtectHome"));
        assert!(!unit.contains("--system"));
    }

    #[test]
    fn paths_with_spaces_and_specials_are_quoted() {
        let unit = render_unit(
            Path::new("/opt/My Tools/wegweiser-agent"),
            &UnitLocation::StateDir("/srv/state 100%/$x".into()),
        );
        assert!(
            unit.contains(
                "\nExecStart=\"/opt/My Tools/wegweiser-agent\" --state-dir \"/srv/state 100%%/$$x\" run\n"
            ),
            "{unit}"
        );
        assert!(
            unit.contains("\nReadWritePaths=\"/srv/state 100%%/$x\"\n"),
            "{unit}"
        );
        assert_eq!(
            quote(Path::new(r#"/a"b\c"#), true),
            r#""/a\"b\\c""#.to_owned()
        );
        assert_eq!(quote(Path::new("/plain/path"), true), "/plain/path");
        assert_eq!(
            shell_quote(Path::new("/var/lib/wegweiser")),
            "/var/lib/wegweiser"
        );
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }

    #[cfg(unix)]
    #[test]
    fn bad_paths_are_refused() {
        assert!(check_path(Path::new("relative/agent")).is_err());
        assert!(check_path(Path::new("/a\nb")).is_err());
        assert!(check_path(Path::new("/usr/bin/wegweiser-agent")).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn install_and_uninstall_in_a_unit_dir() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let units = tempfile::tempdir().unwrap();
        let location = UnitLocation::StateDir(state.path().to_owned());
        let opts = InstallOptions {
            exe: "/usr/local/bin/wegweiser-agent".into(),
            location: location.clone(),
            unit_dir: Some(units.path().to_owned()),
            start: false,
        };
        // Not enrolled yet: refused, nothing written.
        let e = install(&opts).unwrap_err();
        assert!(matches!(e, ServiceError::NotEnrolled { .. }), "{e}");
        let file = units.path().join(UNIT_NAME);
        assert!(!file.exists());

        std::fs::write(state.path().join(crate::paths::CONFIG_FILE), "").unwrap();
        let r = install(&opts).unwrap();
        assert_eq!(r.unit_file, file);
        assert!(!r.replaced && !r.started);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            render_unit(Path::new("/usr/local/bin/wegweiser-agent"), &location)
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // A custom unit dir never runs systemctl, even without --no-start.
        let r = install(&InstallOptions {
            start: true,
            ..opts.clone()
        })
        .unwrap();
        assert!(r.replaced && !r.started);

        let u = uninstall(Some(units.path()), &location).unwrap();
        assert!(u.removed && !u.systemctl);
        assert!(!file.exists());
        assert_eq!(u.enrollment_dirs, vec![state.path().to_owned()]);
        // The enrollment stays.
        assert!(state.path().join(crate::paths::CONFIG_FILE).exists());
        assert!(u.to_text().contains("rm -r"));
        let again = uninstall(Some(units.path()), &location).unwrap();
        assert!(!again.removed);
    }
}
