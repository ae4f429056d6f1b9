//! Running the Windows agent (`wegweiser-agent.exe`, cross-compiled for
//! `x86_64-pc-windows-gnu`) under Wine, for the end-to-end test `tests/tests/windows_wine.rs`.
//!
//! [`Wine::setup`] makes a private, temporary `WINEPREFIX` (initialized once with
//! `wineboot --init`), copies the `.exe` into a temporary folder and builds next to it a stand-in
//! `bcryptprimitives.dll` from `tests/wine/bcryptprimitives.c` with MinGW-w64: Wine 8 lacks the
//! `ProcessPrng` export that Rust's standard library needs. Dropping it stops every process of
//! the prefix (`wineserver -k`) and removes the prefix.
//!
//! Nothing is skipped silently: without Wine, MinGW-w64 or the `.exe`, setup fails naming
//! `scripts/install-windows-toolchain` and the build command; only `WEGWEISER_SKIP_WINE=1` skips,
//! loudly.

use anyhow::{Context, bail};
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Set to `1` to skip the Wine tests (with a loud message); anything else runs them.
pub const ENV_SKIP: &str = "WEGWEISER_SKIP_WINE";
/// The Rust target of the Windows build.
pub const TARGET: &str = "x86_64-pc-windows-gnu";
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
const INSTALL_HINT: &str = "run scripts/install-windows-toolchain (installs MinGW-w64, Wine and the Rust target), then `cargo build -p wegweiser-agent --target x86_64-pc-windows-gnu --locked` (scripts/test does both), or set WEGWEISER_SKIP_WINE=1 to skip";

/// A private Wine prefix with the agent's `.exe` ready to run.
#[derive(Debug)]
pub struct Wine {
    wine: PathBuf,
    /// Holds the prefix and the folder of the `.exe`.
    dir: tempfile::TempDir,
    exe: PathBuf,
}

fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The `.exe` cargo built for [`TARGET`] (honours `CARGO_TARGET_DIR`).
pub fn agent_exe() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    target_dir
        .join(TARGET)
        .join("debug")
        .join("wegweiser-agent.exe")
}

/// `path` as Wine sees it: the Unix root is drive `Z:`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

impl Wine {
    /// `None` (after a loud message on stderr) when `WEGWEISER_SKIP_WINE=1`; otherwise a ready
    /// prefix, or an error naming the install script.
    pub fn setup() -> anyhow::Result<Option<Self>> {
        if std::env::var(ENV_SKIP).as_deref() == Ok("1") {
            eprintln!(
                "\n********************************************************************\n\
                 * SKIPPED: the Windows agent under Wine ({ENV_SKIP}=1).            *\n\
                 * Nothing about the Windows build was tested.                      *\n\
                 ********************************************************************\n"
            );
            return Ok(None);
        }
        let wine = find_in_path(&["wine", "wine64"])
            .with_context(|| format!("wine is not installed: {INSTALL_HINT}"))?;
        let gcc = find_in_path(&[MINGW_GCC])
            .with_context(|| format!("{MINGW_GCC} is not installed: {INSTALL_HINT}"))?;
        let built = agent_exe();
        if !built.is_file() {
            bail!("{} is missing: {INSTALL_HINT}", built.display());
        }
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin)?;
        let exe = bin.join("wegweiser-agent.exe");
        std::fs::copy(&built, &exe).with_context(|| format!("copy {}", built.display()))?;

        let src = crate::workspace_root().join("tests").join("wine");
        let out = Command::new(&gcc)
            .args(["-shared", "-O2", "-o"])
            .arg(bin.join("bcryptprimitives.dll"))
            .arg(src.join("bcryptprimitives.c"))
            .arg(src.join("bcryptprimitives.def"))
            .args(["-ladvapi32", "-Wl,--kill-at"])
            .output()
            .with_context(|| format!("run {MINGW_GCC}"))?;
        if !out.status.success() {
            bail!(
                "building the bcryptprimitives.dll shim failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let this = Self { wine, dir, exe };
        // Once per prefix: creates it (registry, drive C:, MachineGuid). Mono and Gecko are not
        // wanted (their installers would ask).
        let status = this
            .command_of("wineboot")
            .arg("--init")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run wineboot")?;
        if !status.success() {
            bail!("wineboot --init failed ({status})");
        }
        // wineserver writes the registry files when it exits: wait for that, so `system.reg`
        // (read by [`Wine::machine_guid`]) is on disk.
        let _ = this
            .command_of("wineserver")
            .arg("-w")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        Ok(Some(this))
    }

    fn prefix(&self) -> PathBuf {
        self.dir.path().join("prefix")
    }

    /// A Wine tool (`wineboot`, `wineserver`) from the same installation, with this prefix.
    fn command_of(&self, tool: &str) -> Command {
        let sibling = self.wine.with_file_name(tool);
        let mut c = Command::new(if sibling.is_file() {
            sibling
        } else {
            PathBuf::from(tool)
        });
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env("WINEPREFIX", self.prefix())
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env_remove("WEGWEISER_ENROLL_TOKEN")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
    }

    /// `wine wegweiser-agent.exe`, to which the caller adds arguments.
    pub fn agent(&self) -> Command {
        let mut c = Command::new(&self.wine);
        self.env(&mut c);
        c.arg(&self.exe);
        c
    }

    /// Wine's `MachineGuid` of this prefix, read from its registry file (`system.reg`).
    pub fn machine_guid(&self) -> anyhow::Result<String> {
        let reg = std::fs::read_to_string(self.prefix().join("system.reg"))?;
        let mut in_key = false;
        for line in reg.lines() {
            if line.starts_with('[') {
                in_key = line.starts_with(r"[Software\\Microsoft\\Cryptography]");
            } else if in_key && let Some(v) = line.strip_prefix("\"MachineGuid\"=") {
                return Ok(v.trim_matches('"').to_owned());
            }
        }
        bail!("no MachineGuid in the prefix's system.reg")
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        let _ = self
            .command_of("wineserver")
            .arg("-k")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
