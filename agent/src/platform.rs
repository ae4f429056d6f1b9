//! Everything that differs between operating systems: file permissions, atomic writes, and
//! whether a process is alive. The rest of the agent calls these functions and never asks which
//! OS it runs on.
//!
//! | function | Unix | Windows |
//! |---|---|---|
//! | [`create_private_dir`] | mode 0700 on every directory it creates | plain `create_dir_all` |
//! | [`restrict_to_owner`] | mode 0600 | **no-op: ACL hardening is pending** (see its docs) |
//! | [`too_open`] | group/other permission bits | never reports (ACLs are not inspected yet) |
//! | [`try_lock`] | `flock` | `LockFileEx` |
//! | [`pid_alive`] | `/proc/<pid>` on Linux, unknown elsewhere | unknown |

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

/// Creates `path` and its missing parents; on Unix every directory created here gets mode 0700.
/// An existing directory is left as it is.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Restricts `path` to its owner.
///
/// - Unix: sets mode 0600.
/// - Windows: **not implemented yet; returns `Ok(())`.** Setting an owner-only DACL needs the
///   Win32 security API, which this crate cannot call while it forbids `unsafe` code; the files
///   keep the ACL inherited from their directory (`%ProgramData%\Wegweiser` lets local users
///   read by default). Until a vetted safe wrapper is chosen, install the agent with a directory
///   ACL limited to SYSTEM and Administrators.
pub fn restrict_to_owner(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// The permission bits of `path` when group or others may access it (Unix); `None` when only
/// the owner may, or when the platform's permissions are not inspected (Windows, for now).
pub fn too_open(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = fs::metadata(path)?;
        Ok(None)
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
        assert_eq!(too_open(&f).unwrap(), Some(0o644));
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
