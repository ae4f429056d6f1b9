//! The agent's only Win32 calls (through `windows-sys`): owner-only DACLs and reading them back,
//! the system's CPU times, and string values of the registry. Everything here is a thin wrapper
//! that turns pointers into owned Rust values at once; the policy (which principals may have
//! access, how CPU use is computed) lives in [`super`] and is tested on every platform.
//!
//! Every `unsafe` block says why it is sound. Memory the API allocates (`LocalAlloc`) is freed by
//! [`LocalBox`]; handles are closed by [`Handle`].
#![allow(unsafe_code)]

use super::Ace;
use std::{ffi::OsStr, io, os::windows::ffi::OsStrExt, path::Path, ptr};
use windows_sys::Win32::{
    Foundation::{CloseHandle, ERROR_INSUFFICIENT_BUFFER, FILETIME, HANDLE, LocalFree},
    Security::{
        ACE_HEADER, ACL,
        Authorization::{
            ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
            GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT,
        },
        DACL_SECURITY_INFORMATION, GetAce, GetTokenInformation, OWNER_SECURITY_INFORMATION,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SetFileSecurityW,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    },
    System::{
        Registry::{
            HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RRF_RT_REG_SZ, RRF_SUBKEY_WOW6464KEY,
            RegGetValueW,
        },
        Threading::{GetCurrentProcess, GetSystemTimes, OpenProcessToken},
    },
};

/// `ACCESS_ALLOWED_ACE_TYPE` and `ACCESS_ALLOWED_CALLBACK_ACE_TYPE`: the SID follows the header
/// and the 4-byte mask.
const ALLOWED_ACE: u8 = 0;
const ALLOWED_CALLBACK_ACE: u8 = 9;
const SID_OFFSET: usize = std::mem::size_of::<ACE_HEADER>() + std::mem::size_of::<u32>();

/// A NUL-terminated UTF-16 copy of `s`.
fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(std::iter::once(0)).collect()
}

/// Memory the API allocated with `LocalAlloc`, freed on drop.
struct LocalBox(*mut core::ffi::c_void);

impl Drop for LocalBox {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from an API documented to allocate with LocalAlloc, and is
            // freed exactly once, here.
            unsafe { LocalFree(self.0) };
        }
    }
}

/// A handle closed on drop.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by us and is closed exactly once, here.
        unsafe { CloseHandle(self.0) };
    }
}

fn win32(code: u32) -> io::Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(code as i32))
    }
}

/// The string form (`S-1-5-…`) of `sid`.
///
/// # Safety
/// `sid` must point to a valid SID.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut out: *mut u16 = ptr::null_mut();
    // SAFETY: `sid` is valid (caller); `out` receives a LocalAlloc'ed, NUL-terminated string.
    if unsafe { ConvertSidToStringSidW(sid, &mut out) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let _free = LocalBox(out.cast());
    let mut len = 0;
    // SAFETY: the string is NUL-terminated; we read up to and not including the NUL.
    while unsafe { *out.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` u16s were just read from `out`.
    let units = unsafe { std::slice::from_raw_parts(out, len) };
    Ok(String::from_utf16_lossy(units))
}

/// The SID (string form) of the user this process runs as (`S-1-5-18` for LocalSystem).
pub(super) fn current_user_sid() -> io::Result<String> {
    let mut token: HANDLE = ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo handle; `token` receives a new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = Handle(token);
    let mut len = 0u32;
    // SAFETY: a size query: no buffer, `len` receives the size needed.
    unsafe { GetTokenInformation(token.0, TokenUser, ptr::null_mut(), 0, &mut len) };
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32) {
        return Err(err);
    }
    // u64 elements: aligned for TOKEN_USER (pointers).
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` has at least `len` writable bytes.
    if unsafe { GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), len, &mut len) }
        == 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER whose SID points into `buf`, which lives
    // until the end of this function.
    unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        sid_string(user.User.Sid)
    }
}

/// Replaces the DACL of `path` with a protected one (nothing inherited) from `sddl` (a `D:P…`
/// string).
pub(super) fn set_protected_dacl(path: &Path, sddl: &str) -> io::Result<()> {
    let sddl = wide(OsStr::new(sddl));
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'ed security descriptor.
    if unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut sd,
            ptr::null_mut(),
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    let sd = LocalBox(sd);
    let name = wide(path.as_os_str());
    // SAFETY: `name` is NUL-terminated; `sd.0` is the valid descriptor made above (its owner,
    // group and SACL are absent and not applied: only the DACL is set).
    if unsafe {
        SetFileSecurityW(
            name.as_ptr(),
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            sd.0,
        )
    } == 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The owner of `path` and the entries of its DACL (`None`: no DACL, everyone has access).
pub(super) fn read_dacl(path: &Path) -> io::Result<(String, Option<Vec<Ace>>)> {
    let name = wide(path.as_os_str());
    let mut owner: PSID = ptr::null_mut();
    let mut dacl: *mut ACL = ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
    // SAFETY: `name` is NUL-terminated; `owner` and `dacl` point into `sd`, which the call
    // allocates with LocalAlloc and `_sd` frees after the last use of both.
    win32(unsafe {
        GetNamedSecurityInfoW(
            name.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            ptr::null_mut(),
            &mut dacl,
            ptr::null_mut(),
            &mut sd,
        )
    })?;
    let _sd = LocalBox(sd);
    let owner = if owner.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null owner points to a valid SID inside `sd`.
        unsafe { sid_string(owner)? }
    };
    if dacl.is_null() {
        return Ok((owner, None));
    }
    // SAFETY: a non-null DACL is a valid ACL inside `sd`.
    let count = unsafe { (*dacl).AceCount };
    let mut aces = Vec::with_capacity(usize::from(count));
    for i in 0..u32::from(count) {
        let mut ace: *mut core::ffi::c_void = ptr::null_mut();
        // SAFETY: `i` is below the ACL's ACE count; `ace` receives a pointer into the ACL.
        if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every ACE starts with an ACE_HEADER.
        let header = unsafe { &*ace.cast::<ACE_HEADER>() };
        let sid = if matches!(header.AceType, ALLOWED_ACE | ALLOWED_CALLBACK_ACE)
            && usize::from(header.AceSize) > SID_OFFSET
        {
            // SAFETY: allowed ACEs are the header, a 4-byte mask, then the SID (inside AceSize).
            Some(unsafe { sid_string(ace.cast::<u8>().add(SID_OFFSET).cast())? })
        } else {
            None
        };
        let mask = if usize::from(header.AceSize) >= SID_OFFSET {
            // SAFETY: the mask follows the header in every ACE type with a SID; unaligned read
            // as the ACL makes no alignment promise beyond 4 bytes.
            unsafe {
                ace.cast::<u8>()
                    .add(std::mem::size_of::<ACE_HEADER>())
                    .cast::<u32>()
                    .read_unaligned()
            }
        } else {
            0
        };
        aces.push(Ace {
            kind: header.AceType,
            flags: header.AceFlags,
            mask,
            sid,
        });
    }
    Ok((owner, Some(aces)))
}

/// Idle, kernel (idle included) and user time of all processors since boot, in 100 ns units.
pub(super) fn system_times() -> io::Result<(u64, u64, u64)> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut idle, mut kernel, mut user) = (zero, zero, zero);
    // SAFETY: three valid, writable FILETIMEs.
    if unsafe { GetSystemTimes(&mut idle, &mut kernel, &mut user) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let n = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    Ok((n(idle), n(kernel), n(user)))
}

/// A `REG_DWORD` value under `HKEY_LOCAL_MACHINE\<key>` (the 64-bit view), `None` when missing.
pub(super) fn registry_dword(key: &str, value: &str) -> Option<u32> {
    let (key, value) = (wide(OsStr::new(key)), wide(OsStr::new(value)));
    let read = |flags: u32| -> Option<u32> {
        let mut data = 0u32;
        let mut bytes = std::mem::size_of::<u32>() as u32;
        // SAFETY: `key` and `value` are NUL-terminated; `data` has `bytes` writable bytes.
        let rc = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                key.as_ptr(),
                value.as_ptr(),
                flags,
                ptr::null_mut(),
                (&raw mut data).cast(),
                &mut bytes,
            )
        };
        (rc == 0).then_some(data)
    };
    read(RRF_RT_REG_DWORD | RRF_SUBKEY_WOW6464KEY).or_else(|| read(RRF_RT_REG_DWORD))
}

/// A `REG_SZ` value under `HKEY_LOCAL_MACHINE\<key>` (the 64-bit view), `None` when missing.
pub(super) fn registry_string(key: &str, value: &str) -> Option<String> {
    let (key, value) = (wide(OsStr::new(key)), wide(OsStr::new(value)));
    let read = |flags: u32| -> Option<String> {
        let mut buf = vec![0u16; 256];
        loop {
            let mut bytes = u32::try_from(buf.len() * 2).ok()?;
            // SAFETY: `key` and `value` are NUL-terminated; `buf` has `bytes` writable bytes.
            let rc = unsafe {
                RegGetValueW(
                    HKEY_LOCAL_MACHINE,
                    key.as_ptr(),
                    value.as_ptr(),
                    flags,
                    ptr::null_mut(),
                    buf.as_mut_ptr().cast(),
                    &mut bytes,
                )
            };
            match rc {
                0 => {
                    let units = &buf[..(bytes as usize / 2).min(buf.len())];
                    let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
                    return Some(String::from_utf16_lossy(&units[..end]));
                }
                // ERROR_MORE_DATA: `bytes` holds the size needed.
                234 if buf.len() < 64 * 1024 => buf.resize((bytes as usize).div_ceil(2) + 1, 0),
                _ => return None,
            }
        }
    };
    // Older Wine versions refuse the view flag: ask again without it (a 64-bit process reads
    // the 64-bit view anyway).
    read(RRF_RT_REG_SZ | RRF_SUBKEY_WOW6464KEY).or_else(|| read(RRF_RT_REG_SZ))
}
