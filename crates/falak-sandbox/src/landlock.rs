//! Landlock: the workload may write only inside its own directory, where the kernel has it.
//!
//! The ruleset is built in the node with the `landlock` crate in best-effort mode (whatever
//! the running kernel's ABI supports): read and execute everywhere when the workload has a
//! mount namespace that hides the node's files ([`crate::namespaces`]), else only in the
//! system directories ([`SYSTEM_DIRS`]) and the paths it is given; every right in the
//! workload's directory; read and write on the harmless device files (`/dev/null`,
//! `/dev/zero`, `/dev/full`, `/dev/random`, `/dev/urandom`). Nothing else — not `/tmp`, not
//! `/dev/shm`, so a workload gets its own `TMPDIR` inside its directory. Where the kernel
//! supports scopes (ABI 6), the workload also may not signal processes outside its domain
//! nor connect to abstract Unix sockets made outside it.
//!
//! The child only calls `landlock_restrict_self` on the prepared ruleset's descriptor (a raw
//! system call: the crate's `restrict_self` consumes the ruleset and builds error values, which
//! has no place between fork and exec). Landlock adds to the user and permission checks; it
//! never replaces them, so a kernel without it still keeps a workload out of root's files.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    Scope,
};

/// The newest ABI this code asks for; the kernel's older ABI is used when it has one.
const WANTED: ABI = ABI::V6;

/// What a workload may read (and execute) without a mount namespace: the system's programs,
/// libraries and configuration, and the kernel's views of itself. Not `/home`, `/root`, `/tmp`,
/// `/var` or `/run` (a user's runtime dir holds sockets like the SSH agent's).
pub const SYSTEM_DIRS: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys", "/dev"];

/// Device files every workload may read and write.
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// The running kernel's Landlock ABI version, `None` when it has no Landlock (not built in,
/// or not enabled at boot).
pub fn abi_version() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag, a null attribute and size 0 the call only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(version).ok().filter(|v| *v > 0)
}

/// A ruleset ready for a child to enforce on itself.
#[derive(Debug)]
pub struct LandlockRuleset {
    fd: OwnedFd,
}

/// Why the workload's ruleset could not be built; the workload was not started.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the Landlock ruleset for {path}: {message}")]
pub struct LandlockError {
    pub path: String,
    pub message: String,
}

impl LandlockRuleset {
    /// The ruleset for a workload whose only writable directory is `workdir`, reading
    /// everything (when a mount namespace already hides the node's files). `Ok(None)` when
    /// the kernel has no Landlock.
    pub fn for_workdir(workdir: &Path) -> Result<Option<LandlockRuleset>, LandlockError> {
        LandlockRuleset::for_workload(workdir, &[], true)
    }

    /// The ruleset for a workload whose only writable directory is `workdir`: reading
    /// everything when `read_everything`, else only [`SYSTEM_DIRS`], `readable` and `workdir`.
    /// `Ok(None)` when the kernel has no Landlock.
    pub fn for_workload(
        workdir: &Path,
        readable: &[&Path],
        read_everything: bool,
    ) -> Result<Option<LandlockRuleset>, LandlockError> {
        if abi_version().is_none() {
            return Ok(None);
        }
        let fail = |path: &Path| {
            let path = path.display().to_string();
            move |e: landlock::RulesetError| LandlockError { path, message: e.to_string() }
        };
        let root = Path::new("/");
        let path_fd = |path: &Path| {
            PathFd::new(path).map_err(|e| LandlockError { path: path.display().to_string(), message: e.to_string() })
        };
        let all = AccessFs::from_all(WANTED);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(fail(root))?
            .scope(Scope::from_all(WANTED))
            .map_err(fail(root))?
            .create()
            .map_err(fail(root))?;
        let read: Vec<&Path> = if read_everything {
            vec![root]
        } else {
            let system = SYSTEM_DIRS.iter().map(Path::new).filter(|dir| dir.exists());
            system.chain(readable.iter().copied()).collect()
        };
        for dir in read {
            ruleset =
                ruleset.add_rule(PathBeneath::new(path_fd(dir)?, AccessFs::from_read(WANTED))).map_err(fail(dir))?;
        }
        ruleset = ruleset.add_rule(PathBeneath::new(path_fd(workdir)?, all)).map_err(fail(workdir))?;
        for device in DEVICES.iter().map(Path::new).filter(|d| d.exists()) {
            ruleset = ruleset
                .add_rule(PathBeneath::new(path_fd(device)?, AccessFs::from_file(WANTED)))
                .map_err(fail(device))?;
        }
        let fd: Option<OwnedFd> = ruleset.into();
        Ok(fd.map(|fd| LandlockRuleset { fd }))
    }

    /// Enforce the ruleset on the calling thread and whatever it executes. Needs
    /// no_new_privs (or `CAP_SYS_ADMIN`).
    ///
    /// # Safety
    /// One async-signal-safe system call on a descriptor `self` owns; fine between fork and
    /// exec.
    pub(crate) unsafe fn restrict_self(&self) -> io::Result<()> {
        let flags: libc::c_uint = 0;
        // SAFETY: a plain system call on an open ruleset descriptor.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, self.fd.as_raw_fd(), flags) };
        if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn writes_outside_the_workdir_are_refused_where_the_kernel_has_landlock() {
        let Some(abi) = abi_version() else {
            // Nothing to enforce: building a ruleset must say so rather than fail.
            let dir = tempfile::tempdir().unwrap();
            assert!(LandlockRuleset::for_workdir(dir.path()).unwrap().is_none());
            return;
        };
        assert!(abi >= 1);
        let outside = tempfile::tempdir().unwrap();
        let workdir = tempfile::tempdir().unwrap();
        let ruleset = LandlockRuleset::for_workdir(workdir.path()).unwrap().expect("a ruleset");
        let script = format!(
            "echo in > {inside}/file && echo inside-ok; echo out > {outside}/file || echo outside-refused; \
             cat /etc/hostname >/dev/null && echo read-ok; echo x > /dev/null && echo null-ok",
            inside = workdir.path().display(),
            outside = outside.path().display()
        );
        let mut command = Command::new("/bin/sh");
        command.args(["-c", &script]);
        // SAFETY: prctl and restrict_self are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) == -1 {
                    return Err(io::Error::last_os_error());
                }
                ruleset.restrict_self()
            })
        };
        let output = command.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "inside-ok\noutside-refused\nread-ok\nnull-ok\n",
            "{output:?}"
        );
        assert!(!outside.path().join("file").exists());
    }
}
