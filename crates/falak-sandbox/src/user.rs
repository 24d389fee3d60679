//! The unprivileged user a workload runs as.

use std::ffi::CString;
use std::io;

/// The user and group a workload runs as. Supplementary groups are always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The uid and gid of `nobody`/`nogroup` on Linux, used when the user database has no `nobody`.
pub const NOBODY: RunAs = RunAs { uid: 65534, gid: 65534 };

impl RunAs {
    /// The user workloads run as by default: `nobody` (with its primary group, `nogroup` on
    /// Debian), falling back to uid/gid 65534 when the user database does not list it.
    ///
    /// When the node runs as root, workloads run as nobody:nogroup by default; when it does not,
    /// they run as the node's own user (see [`RunAs::default_for_node`]).
    pub fn unprivileged_default() -> RunAs {
        RunAs::lookup("nobody").unwrap_or(NOBODY)
    }

    /// The default for a node running as the current process's user: nobody when root,
    /// otherwise `None` (an unprivileged node cannot switch users, so workloads run as the node's
    /// user).
    pub fn default_for_node() -> Option<RunAs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        (euid == 0).then(RunAs::unprivileged_default)
    }

    /// Resolve a user name through the system's user database (NSS), taking the user's
    /// primary group.
    pub fn lookup(name: &str) -> Result<RunAs, LookupUserError> {
        let not_found = || LookupUserError::NotFound { name: name.to_owned() };
        let c_name = CString::new(name).map_err(|_| not_found())?;
        let mut buffer = vec![0u8; 4096];
        loop {
            // SAFETY: `passwd` is a C struct of integers and pointers, for which all-zero is a
            // valid value; getpwnam_r overwrites it.
            let mut passwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the duration of the call, `c_name` is
            // NUL-terminated and `buffer.len()` is the true size of `buffer`. We read only the
            // integer fields of `passwd` afterwards, so its pointers into `buffer` never outlive it.
            let rc = unsafe {
                libc::getpwnam_r(c_name.as_ptr(), &mut passwd, buffer.as_mut_ptr().cast(), buffer.len(), &mut found)
            };
            if rc == libc::ERANGE && buffer.len() < (1 << 20) {
                buffer.resize(buffer.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(LookupUserError::Database {
                    name: name.to_owned(),
                    source: io::Error::from_raw_os_error(rc),
                });
            }
            if found.is_null() {
                return Err(not_found());
            }
            return Ok(RunAs { uid: passwd.pw_uid, gid: passwd.pw_gid });
        }
    }
}

/// Why a user name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum LookupUserError {
    #[error("user {name:?} does not exist; create it or configure another workload user")]
    NotFound { name: String },
    #[error("cannot look up user {name:?} in the user database: {source}")]
    Database { name: String, source: io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_resolves_to_65534() {
        assert_eq!(RunAs::unprivileged_default(), NOBODY);
        assert_eq!(RunAs::lookup("root").unwrap(), RunAs { uid: 0, gid: 0 });
        assert!(matches!(RunAs::lookup("no-such-user-falak"), Err(LookupUserError::NotFound { .. })));
    }
}
