//! What the device tells the control plane about itself at enrollment.
//!
//! | fact | Linux | Windows | elsewhere |
//! |---|---|---|---|
//! | hostname | `/proc/sys/kernel/hostname`, `/etc/hostname` | `COMPUTERNAME`, registry `ActiveComputerName` | `HOSTNAME` |
//! | os, arch | `std::env::consts` | same | same |
//! | os_version | `PRETTY_NAME` of `/etc/os-release` | registry `ProductName` (and `DisplayVersion`) | empty |
//! | machine_id | `/etc/machine-id`, `/var/lib/dbus/machine-id` | registry `MachineGuid` | `--machine-id` |
//!
//! On Windows the registry is read directly (`RegGetValueW`, 64-bit view, through
//! [`crate::platform::registry_string`]), so a 32-bit view or a missing `reg.exe` does not matter;
//! under Wine, `wineboot` writes `MachineGuid` when it creates the prefix.
//!
//! `--machine-id` overrides what is found. Nothing here fails: missing facts are empty and
//! [`DeviceFacts::problems`] names them.

use wegweiser_shared::enroll::DeviceFacts;

/// Where Windows keeps its product name and release.
const WINDOWS_VERSION_KEY: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";

/// Collects the facts of this machine; `machine_id` overrides the detected machine id.
pub fn collect(machine_id: Option<&str>) -> DeviceFacts {
    DeviceFacts {
        hostname: hostname(),
        os: std::env::consts::OS.to_owned(),
        os_version: os_version(),
        arch: std::env::consts::ARCH.to_owned(),
        machine_id: match machine_id {
            Some(m) => m.trim().to_owned(),
            None => detect_machine_id(),
        },
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// The first non-empty trimmed content among `files`.
fn first_file(files: &[&str]) -> Option<String> {
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        let t = text.trim();
        (!t.is_empty()).then(|| t.to_owned())
    })
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn hostname() -> String {
    let found = if cfg!(target_os = "linux") {
        first_file(&["/proc/sys/kernel/hostname", "/etc/hostname"])
    } else if cfg!(windows) {
        env_nonempty("COMPUTERNAME").or_else(|| {
            crate::platform::registry_string(
                r"SYSTEM\CurrentControlSet\Control\ComputerName\ActiveComputerName",
                "ComputerName",
            )
        })
    } else {
        None
    };
    found
        .or_else(|| env_nonempty("HOSTNAME"))
        .unwrap_or_default()
}

fn os_version() -> String {
    if cfg!(target_os = "linux") {
        std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| pretty_name(&t))
            .unwrap_or_default()
    } else if cfg!(windows) {
        let product = crate::platform::registry_string(WINDOWS_VERSION_KEY, "ProductName");
        let release = crate::platform::registry_string(WINDOWS_VERSION_KEY, "DisplayVersion");
        match (product, release) {
            (Some(p), Some(r)) => format!("{p} {r}"),
            (Some(p), None) => p,
            (None, _) => String::new(),
        }
    } else {
        String::new()
    }
}

fn detect_machine_id() -> String {
    if cfg!(target_os = "linux") {
        first_file(&["/etc/machine-id", "/var/lib/dbus/machine-id"]).unwrap_or_default()
    } else if cfg!(windows) {
        crate::platform::registry_string(r"SOFTWARE\Microsoft\Cryptography", "MachineGuid")
            .unwrap_or_default()
    } else {
        String::new()
    }
}

/// `PRETTY_NAME` from os-release text (quotes removed).
fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?;
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        (!unquoted.is_empty()).then(|| unquoted.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_no_problems() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let f = collect(None);
        assert!(f.problems().is_empty(), "{f:?}: {:?}", f.problems());
        assert_eq!(f.os, "linux");
        assert_eq!(f.agent_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn machine_id_override_wins() {
        let f = collect(Some("  custom-id \n"));
        assert_eq!(f.machine_id, "custom-id");
        assert!(
            collect(Some(""))
                .problems()
                .iter()
                .any(|p| p.contains("machine_id"))
        );
    }

    #[test]
    fn parses_os_release() {
        let text = "NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nID=ubuntu\n";
        assert_eq!(pretty_name(text).as_deref(), Some("Ubuntu 24.04.1 LTS"));
        assert_eq!(
            pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(pretty_name("NAME=x\n"), None);
    }
}
