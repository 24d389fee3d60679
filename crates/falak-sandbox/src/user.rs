//! The unprivileged user a workload runs as.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::sync::Mutex;

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

/// The uids a node gives its workloads: one per workload (a capsule, a function), so that one
/// workload cannot read another's files, logs or sockets, nor signal or trace its processes.
/// The gid equals the uid.
///
/// A uid is the first free one from a hash of the workload's name, so it is usually the same
/// across node restarts; the table lives in memory. When the node is root the workload runs
/// as that uid; when it is not, the uid is what the workload sees inside its user namespace
/// (mapped to the node's own outside).
#[derive(Debug)]
pub struct WorkloadUsers {
    first: u32,
    count: u32,
    assigned: Mutex<BTreeMap<String, u32>>,
}

impl WorkloadUsers {
    /// The default range `(first, count)`: above the ids distributions give people and system
    /// services, and above the usual `/etc/subuid` ranges (100000–165535 for the first user).
    pub const DEFAULT_RANGE: (u32, u32) = (600_000, 65_536);

    /// Uids `first ..= first + count - 1`; `count` at least 1.
    pub fn new(first: u32, count: u32) -> WorkloadUsers {
        let count = count.max(1).min(u32::MAX - first);
        WorkloadUsers { first, count, assigned: Mutex::new(BTreeMap::new()) }
    }

    pub fn range(&self) -> (u32, u32) {
        (self.first, self.count)
    }

    /// The user of `workload`: the same for every call with the same name.
    pub fn user_for(&self, workload: &str) -> RunAs {
        let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&uid) = assigned.get(workload) {
            return RunAs { uid, gid: uid };
        }
        // FNV-1a: stable across builds and platforms, which std's hasher is not.
        let hash =
            workload.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let start = (hash % u64::from(self.count)) as u32;
        let taken: std::collections::BTreeSet<u32> = assigned.values().copied().collect();
        let offset = (0..self.count).map(|i| (start + i) % self.count).find(|o| !taken.contains(&(self.first + o)));
        // With every uid taken, share the hashed one rather than refuse to run.
        let uid = self.first + offset.unwrap_or(start);
        assigned.insert(workload.to_owned(), uid);
        RunAs { uid, gid: uid }
    }
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

    #[test]
    fn each_workload_gets_its_own_uid_from_the_range_and_keeps_it() {
        let users = WorkloadUsers::new(1000, 3);
        let a = users.user_for("capsule:a");
        let b = users.user_for("capsule:b");
        let c = users.user_for("fn:c");
        assert_eq!(users.user_for("capsule:a"), a);
        let mut uids = vec![a.uid, b.uid, c.uid];
        uids.sort();
        assert_eq!(uids, vec![1000, 1001, 1002], "distinct, inside the range");
        assert_eq!(a.gid, a.uid);
        // The range is full: a fourth workload shares a uid rather than fail.
        assert!((1000..1003).contains(&users.user_for("d").uid));
        // The same name gets the same uid in a fresh table (a restarted node).
        assert_eq!(WorkloadUsers::new(1000, 3).user_for("capsule:a"), a);
    }
}
