//! Everything that differs between operating systems: file permissions, atomic writes, and
//! whether a process is alive. The rest of the agent calls these functions and never asks which
//! OS it runs on. The Win32 calls live in `platform/windows.rs`, the only module of the agent
//! allowed `unsafe` code.
//!
//! | function | Unix | Windows |
//! |---|---|---|
//! | [`create_private_dir`] | mode 0700 on every directory it creates | protected DACL (below, inherited by what is created inside) on every directory it creates |
//! | [`restrict_to_owner`] | mode 0600 | protected DACL: full control for SYSTEM, Administrators and the current user only; nothing inherited |
//! | [`too_open`] | group/other permission bits | principals other than SYSTEM, Administrators, the owner and the current user that the DACL grants access (a missing DACL: everyone) |
//! | [`try_lock`] | `flock` | `LockFileEx` |
//! | [`pid_alive`] | `/proc/<pid>` on Linux, unknown elsewhere | unknown |
//! | [`registry_string`], [`registry_dword`] | `None` | `RegGetValueW` (`HKEY_LOCAL_MACHINE`, 64-bit view) |
//! | [`cpu_times`] | `None` (sysinfo reads `/proc/stat`) | `GetSystemTimes` |

use std::{
    fmt, fs,
    io::{self, Write},
    path::Path,
};

#[cfg(windows)]
mod windows;

/// Who besides the owner may reach a file or directory, as found by [`too_open`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exposure {
    /// Unix: the permission bits, with group or other bits set.
    Mode(u32),
    /// Windows: the other principals the DACL grants access (SID, with a name when well known);
    /// `Everyone (no DACL)` when the object has no DACL at all.
    Principals(Vec<String>),
}

impl Exposure {
    /// The Unix permission bits, if that is what this is.
    pub fn mode(&self) -> Option<u32> {
        match self {
            Self::Mode(m) => Some(*m),
            Self::Principals(_) => None,
        }
    }

    /// The command that makes `path` owner-only again.
    pub fn fix(&self, path: &str) -> String {
        match self {
            Self::Mode(_) => format!("chmod 600 {path}"),
            Self::Principals(_) => format!(
                "icacls \"{path}\" /inheritance:r /grant:r *S-1-5-18:F *S-1-5-32-544:F %USERNAME%:F"
            ),
        }
    }
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mode(m) => write!(f, "mode {m:o}"),
            Self::Principals(p) => write!(f, "access for {}", p.join(", ")),
        }
    }
}

/// One DACL entry as read from Windows (kept platform-neutral so the policy is tested
/// everywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    /// `AceType`: 0 allowed, 1 denied, 9 allowed with callback, …
    pub kind: u8,
    /// `AceFlags` (0x08: inherit only, no effect on the object itself).
    pub flags: u8,
    /// The access mask.
    pub mask: u32,
    /// The trustee of an allowed ACE (string SID); `None` for other types.
    pub sid: Option<String>,
}

/// The SID of LocalSystem.
pub const SID_SYSTEM: &str = "S-1-5-18";
/// The SID of the local Administrators group.
pub const SID_ADMINISTRATORS: &str = "S-1-5-32-544";

/// The principals other than SYSTEM, Administrators, `owner` and `user` that `aces` grant some
/// access to (deny entries and inherit-only entries do not count). An allowed entry whose
/// trustee could not be read counts as an unknown principal.
pub fn other_principals(owner: &str, user: &str, aces: &[Ace]) -> Vec<String> {
    const INHERIT_ONLY: u8 = 0x08;
    const DENIED: [u8; 4] = [1, 6, 10, 12];
    let mut others: Vec<String> = Vec::new();
    for ace in aces {
        if ace.flags & INHERIT_ONLY != 0 || ace.mask == 0 || DENIED.contains(&ace.kind) {
            continue;
        }
        let name = match &ace.sid {
            Some(sid)
                if sid == SID_SYSTEM
                    || sid == SID_ADMINISTRATORS
                    || sid == owner
                    || sid == user =>
            {
                continue;
            }
            Some(sid) => describe_sid(sid),
            None => format!("an entry of type {}", ace.kind),
        };
        if !others.contains(&name) {
            others.push(name);
        }
    }
    others
}

fn describe_sid(sid: &str) -> String {
    let name = match sid {
        "S-1-1-0" => "Everyone",
        "S-1-5-11" => "Authenticated Users",
        "S-1-5-32-545" => "Users",
        "S-1-5-32-546" => "Guests",
        "S-1-5-4" => "Interactive",
        "S-1-3-0" => "Creator Owner",
        "S-1-5-7" => "Anonymous",
        _ => return sid.to_owned(),
    };
    format!("{name} ({sid})")
}

/// The DACL (SDDL) that [`restrict_to_owner`] sets on Windows: protected (`P`, nothing
/// inherited), full control for SYSTEM, Administrators and `user`; on a directory the entries are
/// inherited by everything created inside (`OICI`).
pub fn owner_only_sddl(user: &str, dir: bool) -> String {
    let inherit = if dir { "OICI" } else { "" };
    format!("D:P(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)(A;{inherit};FA;;;{user})")
}

/// Creates `path` and its missing parents; every directory created here is made private: mode
/// 0700 on Unix, an owner-only protected DACL on Windows. An existing directory is left as it
/// is.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    #[cfg(windows)]
    let missing: Vec<std::path::PathBuf> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .map(Path::to_path_buf)
        .collect();
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)?;
    #[cfg(windows)]
    for dir in missing.iter().rev() {
        restrict_to_owner(dir)?;
    }
    Ok(())
}

/// Restricts `path` (a file or a directory) to its owner.
///
/// - Unix: sets mode 0600.
/// - Windows: sets a protected DACL granting full control to SYSTEM, Administrators and the
///   user the agent runs as, and nobody else ([`owner_only_sddl`]); inherited entries are
///   removed. On a directory the entries are inherited by what is created inside.
pub fn restrict_to_owner(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }
    #[cfg(windows)]
    {
        let user = windows::current_user_sid()?;
        windows::set_protected_dacl(path, &owner_only_sddl(&user, path.is_dir()))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = path;
        Ok(())
    }
}

/// Who besides the owner may access `path`: on Unix the permission bits when group or other
/// bits are set; on Windows the principals other than SYSTEM, Administrators, the owner and the
/// current user that its DACL grants access ([`other_principals`]). `None` when only the owner
/// may.
pub fn too_open(path: &Path) -> io::Result<Option<Exposure>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(Exposure::Mode(mode)))
    }
    #[cfg(windows)]
    {
        let (owner, aces) = windows::read_dacl(path)?;
        let others = match aces {
            None => vec!["Everyone (no DACL)".to_owned()],
            Some(aces) => other_principals(&owner, &windows::current_user_sid()?, &aces),
        };
        Ok((!others.is_empty()).then_some(Exposure::Principals(others)))
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = fs::metadata(path)?;
        Ok(None)
    }
}

/// Idle, kernel (idle included) and user time of all processors since boot, in 100 ns units
/// (Windows `GetSystemTimes`); `None` elsewhere or when the call fails.
pub fn cpu_times() -> Option<(u64, u64, u64)> {
    #[cfg(windows)]
    {
        windows::system_times().ok()
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// A `REG_DWORD` value under `HKEY_LOCAL_MACHINE\\<key>` (Windows registry, 64-bit view);
/// `None` elsewhere or when missing.
pub fn registry_dword(key: &str, value: &str) -> Option<u32> {
    #[cfg(windows)]
    {
        windows::registry_dword(key, value)
    }
    #[cfg(not(windows))]
    {
        let _ = (key, value);
        None
    }
}

/// A string value under `HKEY_LOCAL_MACHINE\<key>` (Windows registry, 64-bit view); `None`
/// elsewhere or when missing.
pub fn registry_string(key: &str, value: &str) -> Option<String> {
    #[cfg(windows)]
    {
        windows::registry_string(key, value)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
    #[cfg(not(windows))]
    {
        let _ = (key, value);
        None
    }
}

/// Writes `bytes` to `path` atomically, readable only by the owner: a new temporary file
/// (created 0600 on Unix) in the same directory, fsync, rename over `path`, fsync the directory.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, true)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with default permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, false)
}

fn write_atomic_with(path: &Path, bytes: &[u8], owner_only: bool) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}-{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if owner_only { 0o600 } else { 0o644 });
        }
        let mut file = opts.open(&tmp)?;
        if owner_only {
            restrict_to_owner(&tmp)?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename durable (Unix); best effort, as some file systems refuse to fsync directories.
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Takes an exclusive advisory lock on `path` (created if missing) without waiting: `Some(file)`
/// holds it until dropped or the process exits (a crash releases it); `None` when another process
/// holds it.
pub fn try_lock(path: &Path) -> io::Result<Option<fs::File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether process `pid` exists: `Some` on Linux (`/proc/<pid>`), `None` where it is not known.
pub fn pid_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") {
        Some(Path::new("/proc").join(pid.to_string()).exists())
    } else {
        None
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    fn allow(sid: &str) -> Ace {
        Ace {
            kind: 0,
            flags: 0,
            mask: 0x001f_01ff,
            sid: Some(sid.to_owned()),
        }
    }

    #[test]
    fn only_system_administrators_and_the_owner_are_expected() {
        let user = "S-1-5-21-1-2-3-1001";
        let owner = "S-1-5-21-1-2-3-1002";
        let ours = [
            allow(SID_SYSTEM),
            allow(SID_ADMINISTRATORS),
            allow(user),
            allow(owner),
        ];
        assert!(other_principals(owner, user, &ours).is_empty());
        let mut aces = ours.to_vec();
        aces.push(allow("S-1-5-32-545"));
        aces.push(allow("S-1-1-0"));
        aces.push(allow("S-1-1-0"));
        aces.push(allow("S-1-5-21-9-9-9-500"));
        // Deny entries, inherit-only entries and empty masks grant nothing.
        aces.push(Ace {
            kind: 1,
            ..allow("S-1-5-11")
        });
        aces.push(Ace {
            flags: 0x08 | 0x03,
            ..allow("S-1-3-0")
        });
        aces.push(Ace {
            mask: 0,
            ..allow("S-1-5-4")
        });
        assert_eq!(
            other_principals(owner, user, &aces),
            vec![
                "Users (S-1-5-32-545)".to_owned(),
                "Everyone (S-1-1-0)".to_owned(),
                "S-1-5-21-9-9-9-500".to_owned(),
            ]
        );
        // An allowed entry whose trustee is unknown counts.
        let odd = Ace {
            kind: 5,
            flags: 0,
            mask: 1,
            sid: None,
        };
        assert_eq!(
            other_principals(owner, user, &[odd]),
            vec!["an entry of type 5".to_owned()]
        );
    }

    #[test]
    fn owner_only_sddl_is_protected() {
        assert_eq!(
            owner_only_sddl("S-1-5-18", false),
            "D:P(A;;FA;;;SY)(A;;FA;;;BA)(A;;FA;;;S-1-5-18)"
        );
        assert_eq!(
            owner_only_sddl("S-1-5-21-1", true),
            "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;S-1-5-21-1)"
        );
        let e = Exposure::Principals(vec!["Everyone (S-1-1-0)".into()]);
        assert_eq!(e.to_string(), "access for Everyone (S-1-1-0)");
        assert_eq!(e.mode(), None);
        assert!(e.fix(r"C:\x\device.nk").starts_with("icacls "));
        assert_eq!(Exposure::Mode(0o640).to_string(), "mode 640");
        assert_eq!(Exposure::Mode(0o640).fix("/a"), "chmod 600 /a");
    }
}

#[cfg(test)]
#[cfg(windows)]
mod windows_tests {
    use super::*;

    #[test]
    fn private_dirs_and_owner_only_files_have_no_other_principals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        create_private_dir(&dir).unwrap();
        assert_eq!(too_open(&dir).unwrap(), None);
        let f = dir.join("secret");
        write_owner_only(&f, b"one").unwrap();
        assert_eq!(too_open(&f).unwrap(), None);
        // Replacing a file others could read leaves an owner-only one. (Files created inside a
        // private directory inherit its entries on Windows, but Wine does not implement
        // inheritance, so that is not asserted here.)
        fs::write(dir.join("plain"), b"x").unwrap();
        write_owner_only(&dir.join("plain"), b"y").unwrap();
        assert_eq!(too_open(&dir.join("plain")).unwrap(), None);
    }

    #[test]
    fn cpu_times_move_forward() {
        let (idle, kernel, user) = cpu_times().unwrap();
        assert!(kernel >= idle && kernel + user > 0);
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_and_owner_only_atomic_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        let f = dir.join("secret");
        write_owner_only(&f, b"one").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(too_open(&f).unwrap(), None);
        // Replacing a file others could read leaves an owner-only one.
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(too_open(&f).unwrap(), Some(Exposure::Mode(0o644)));
        write_owner_only(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(mode(&f), 0o600);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
        write_atomic(&dir.join("plain"), b"x").unwrap();
        assert_eq!(mode(&dir.join("plain")) & 0o600, 0o600);
        // A failed write (missing directory) reports the error.
        assert!(write_owner_only(&tmp.path().join("missing").join("f"), b"x").is_err());
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("run.lock");
        let held = try_lock(&p).unwrap().unwrap();
        assert!(try_lock(&p).unwrap().is_none());
        drop(held);
        assert!(try_lock(&p).unwrap().is_some());
    }

    #[test]
    fn own_process_is_alive() {
        if cfg!(target_os = "linux") {
            assert_eq!(pid_alive(std::process::id()), Some(true));
            assert_eq!(pid_alive(u32::MAX - 1), Some(false));
        }
    }
}
