//! What the device tells the control plane about itself at enrollment.
//!
//! | fact | Linux | Windows | elsewhere |
//! |---|---|---|---|
//! | hostname | `/proc/sys/kernel/hostname`, `/etc/hostname` | `COMPUTERNAME` | `HOSTNAME` |
//! | os, arch | `std::env::consts` | same | same |
//! | os_version | `PRETTY_NAME` of `/etc/os-release` | registry `ProductName` | empty |
//! | machine_id | `/etc/machine-id`, `/var/lib/dbus/machine-id` | registry `MachineGuid` | `--machine-id` |
//!
//! `--machine-id` overrides what is found. Nothing here fails: missing facts are empty and
//! [`DeviceFacts::problems`] names them.

use wegweiser_shared::enroll::DeviceFacts;

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
        env_nonempty("COMPUTERNAME")
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
        reg_query(
            r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
            "ProductName",
        )
        .unwrap_or_default()
    } else {
        String::new()
    }
}

fn detect_machine_id() -> String {
    if cfg!(target_os = "linux") {
        first_file(&["/etc/machine-id", "/var/lib/dbus/machine-id"]).unwrap_or_default()
    } else if cfg!(windows) {
        reg_query(r"HKLM\SOFTWARE\Microsoft\Cryptography", "MachineGuid").unwrap_or_default()
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

/// A string value from the Windows registry through `reg query` (no `unsafe` Win32 calls).
fn reg_query(key: &str, value: &str) -> Option<String> {
    let out = std::process::Command::new("reg")
        .args(["query", key, "/v", value])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_reg_output(&String::from_utf8_lossy(&out.stdout), value)
}

/// Finds `    <value>    REG_SZ    <data>` in `reg query` output.
fn parse_reg_output(output: &str, value: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        if !parts.next()?.eq_ignore_ascii_case(value) {
            return None;
        }
        if !parts.next()?.starts_with("REG_") {
            return None;
        }
        let data = parts.collect::<Vec<_>>().join(" ");
        (!data.is_empty()).then_some(data)
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
    fn parses_os_release_and_reg_output() {
        let text = "NAME=\"Ubuntu\"\nPRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nID=ubuntu\n";
        assert_eq!(pretty_name(text).as_deref(), Some("Ubuntu 24.04.1 LTS"));
        assert_eq!(
            pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(pretty_name("NAME=x\n"), None);
        let reg = "\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Cryptography\r\n    MachineGuid    REG_SZ    6f1c1d2e-0000-4a4b-9c9d-123456789abc\r\n\r\n";
        assert_eq!(
            parse_reg_output(reg, "MachineGuid").as_deref(),
            Some("6f1c1d2e-0000-4a4b-9c9d-123456789abc")
        );
        let product = "    ProductName    REG_SZ    Windows 10 Pro\r\n";
        assert_eq!(
            parse_reg_output(product, "ProductName").as_deref(),
            Some("Windows 10 Pro")
        );
        assert_eq!(parse_reg_output(reg, "Other"), None);
    }
}
