//! The confinement of every process the node starts — task attempts, function zygotes,
//! instances and `exec` commands, dependency builds: one [`WorkloadSandbox`] (what this host
//! allows, [`WorkloadSandbox::from_host`]), one confinement builder
//! ([`WorkloadSandbox::confinement`]), one cgroup per process tree named one way
//! ([`cgroup_name`]), torn down one way ([`Enclosure`]: every process left in the cgroup
//! killed, the cgroup and the tree's private tmp dir removed). `docs/design/executor.md` lists
//! the defaults.
//!
//! A caller describes one process tree with a [`Plan`] — its limits, its writable directory
//! (Landlock), its namespaces ([`falak_sandbox::Isolation`]), its cgroup name and tmp dir —
//! and [`Plan::make`] makes them; [`Made::confinement`] is what the child applies between fork
//! and exec, and [`crate::workload::launch`] starts it.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use falak_sandbox::{
    CgroupLimits, Cgroups, Confinement, HostSandbox, Isolation, LandlockRuleset, Namespaces, Rlimit, RunAs,
    SeccompFilter, WorkloadCgroup, namespaces,
};

/// The limits every process gets unless the caller says otherwise: no core files (they would
/// fill the disk and copy the instance's memory) and 1024 open descriptors.
pub const DEFAULT_RLIMITS: [(Rlimit, u64); 2] = [(Rlimit::Core, 0), (Rlimit::OpenFiles, 1024)];

/// How the node confines the processes it starts: what the host allows, and the workload's
/// user. Node-wide, but for the user, which the node sets per workload.
#[derive(Clone)]
pub struct WorkloadSandbox {
    /// The system-call filter installed last before `exec`; `None` runs unfiltered.
    pub seccomp: Option<Arc<SeccompFilter>>,
    /// Restrict writes to the deployment's `run/` dir with Landlock (where the kernel has it).
    pub landlock: bool,
    /// How the node gives processes namespaces of their own (mount and network, and user
    /// when it is not root). Without, they share the node's files and network (the host's
    /// report says so at startup).
    pub namespaces: Namespaces,
    /// Whether each process tree also gets a pid namespace (its own `/proc`, an init that
    /// takes down what the process leaves behind); where there are namespaces, unless the
    /// host cannot mount a `/proc` for one.
    pub pid_namespaces: bool,
    /// Directories no process may see (the node's data dir, keys, the node user's home): a
    /// process's mount namespace covers them, except the deployment's own directories.
    pub hide: Vec<PathBuf>,
    /// The user processes switch to (the node is root): the deployment's own uid, or nobody.
    /// `None` stays the node's user.
    pub run_as: Option<RunAs>,
    /// The user processes are inside their user namespace (the node is not root): the
    /// deployment's own uid, mapped to the node's.
    pub inner_user: Option<RunAs>,
    /// The node's cgroup scope; `None` runs without cgroups (no memory, cpu or pids limit).
    pub cgroups: Option<Cgroups>,
    /// Set in each process (soft = hard).
    pub rlimits: Vec<(Rlimit, u64)>,
}

impl WorkloadSandbox {
    /// Everything `host` allows: its filter, Landlock, namespaces and cgroups, nobody as the
    /// user when the node is root, and [`DEFAULT_RLIMITS`].
    pub fn from_host(host: &HostSandbox) -> WorkloadSandbox {
        WorkloadSandbox {
            seccomp: host.seccomp.clone(),
            landlock: host.landlock_abi.is_some(),
            namespaces: host.namespaces,
            pid_namespaces: host.pid_namespaces,
            hide: namespaces::default_hidden(),
            run_as: (host.can_switch_users && host.namespaces != Namespaces::User).then(RunAs::unprivileged_default),
            inner_user: None,
            cgroups: host.cgroups.clone(),
            rlimits: DEFAULT_RLIMITS.to_vec(),
        }
    }

    /// Only the floor every process gets anyway (a session of its own, death with the node,
    /// no_new_privs, only the descriptors it is given): the node's user and network, no
    /// filter, no Landlock, no cgroups, no limits. For tests of the protocol and for tools;
    /// a node uses [`WorkloadSandbox::from_host`].
    pub fn unconfined() -> WorkloadSandbox {
        WorkloadSandbox {
            seccomp: None,
            landlock: false,
            namespaces: Namespaces::Unavailable,
            pid_namespaces: false,
            hide: Vec::new(),
            run_as: None,
            inner_user: None,
            cgroups: None,
            rlimits: Vec::new(),
        }
    }

    /// The namespaces this node gives a process (the caller adds its network, user, view and
    /// working directory): the one place an [`Isolation`] of a workload starts from.
    pub fn isolation(&self) -> Isolation {
        Isolation::new(self.namespaces).pid_namespace(self.pid_namespaces)
    }

    /// The one confinement builder: what the child of every workload process applies between
    /// fork and exec (`falak_sandbox::confinement` gives the order). `switch_to` is the user to
    /// become on a root node; the user namespace in `isolation` maps it on an unprivileged one.
    pub fn confinement(
        &self,
        switch_to: Option<RunAs>,
        rlimits: &[(Rlimit, u64)],
        cgroup_joins: Vec<OwnedFd>,
        isolation: Option<namespaces::Prepared>,
        landlock: Option<LandlockRuleset>,
    ) -> Confinement {
        let confinement = Confinement::new()
            .rlimits(rlimits)
            .join_cgroups(cgroup_joins)
            .run_as(switch_to)
            .landlock(landlock)
            .seccomp(self.seccomp.clone());
        match isolation {
            Some(isolation) => confinement.isolation(isolation),
            None => confinement,
        }
    }
}

/// A summary: the compiled filter and the cgroup paths say nothing useful in a log or a test
/// failure.
impl std::fmt::Debug for WorkloadSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSandbox")
            .field("seccomp", &self.seccomp.is_some())
            .field("landlock", &self.landlock)
            .field("namespaces", &self.namespaces)
            .field("pid_namespaces", &self.pid_namespaces)
            .field("hide", &self.hide)
            .field("run_as", &self.run_as)
            .field("inner_user", &self.inner_user)
            .field("cgroups", &self.cgroups.as_ref().map(Cgroups::version))
            .field("rlimits", &self.rlimits)
            .finish()
    }
}

/// The cgroup and private temporary directory of one process tree (a zygote, an instance, an
/// `exec` command). Torn down — every process left in the cgroup killed, the cgroup and the
/// directory removed — by [`Enclosure::teardown`] or when dropped.
#[derive(Debug)]
pub struct Enclosure {
    parts: Mutex<Option<Parts>>,
    /// What [`Enclosure::memory_kill`] read just before the cgroup went.
    memory_kill_at_teardown: OnceLock<Option<u64>>,
}

#[derive(Debug)]
struct Parts {
    /// Run first, each to its end (a container runtime's `delete --force`: without a cgroup
    /// it is what reaches the container's processes).
    commands: Vec<std::process::Command>,
    cgroup: Option<WorkloadCgroup>,
    /// Removed after the cgroup: the tree's tmp dir, and what [`Enclosure::remove_with`] adds.
    dirs: Vec<PathBuf>,
}

impl Parts {
    /// Blocking.
    fn remove(mut self) {
        for command in &mut self.commands {
            let ran = command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if let Err(error) = ran {
                tracing::warn!(%error, program = ?command.get_program(), "cannot run a teardown command");
            }
        }
        if let Some(cgroup) = self.cgroup
            && let Err(error) = cgroup.remove()
        {
            tracing::warn!(%error, "cannot remove a function process's cgroup");
        }
        for dir in self.dirs {
            // `remove_dir_all` does not follow symlinks the instance may have left there.
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(%error, dir = %dir.display(), "cannot remove an instance's directory"),
            }
        }
    }
}

impl Enclosure {
    fn new(cgroup: Option<WorkloadCgroup>, tmp: Option<PathBuf>) -> Enclosure {
        let parts = Parts { commands: Vec::new(), cgroup, dirs: tmp.into_iter().collect() };
        Enclosure { parts: Mutex::new(Some(parts)), memory_kill_at_teardown: OnceLock::new() }
    }

    /// Remove `dir` too at teardown, once every process of the tree is gone (a container's
    /// bundle and runtime state).
    pub fn remove_with(&self, dir: PathBuf) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        match parts.as_mut() {
            Some(parts) => parts.dirs.push(dir),
            None => drop(fs::remove_dir_all(dir)),
        }
    }

    /// Run `command` first at teardown, before the cgroup goes (a container runtime's
    /// `delete --force`).
    pub fn run_at_teardown(&self, command: std::process::Command) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        match parts.as_mut() {
            Some(parts) => parts.commands.push(command),
            None => {
                let mut command = command;
                drop(command.status());
            }
        }
    }

    /// The tree's cgroup as a path from the root of the cgroup v2 hierarchy, when it has a v2
    /// one (an OCI runtime is told it; on v1 the runtime joins it instead).
    pub fn unified_path(&self) -> Option<String> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.as_ref().and_then(|p| p.cgroup.as_ref()).and_then(WorkloadCgroup::unified_path)
    }

    /// The memory limit, when the kernel killed a process of this tree for going over it.
    pub fn memory_kill(&self) -> Option<u64> {
        if let Some(seen) = self.memory_kill_at_teardown.get() {
            return *seen;
        }
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.as_ref().and_then(|p| p.cgroup.as_ref()).and_then(WorkloadCgroup::memory_kill)
    }

    /// Move `pid` (a zygote's new child) into this tree's cgroup. Blocking (one write per
    /// hierarchy).
    pub fn adopt(&self, pid: u32) -> io::Result<()> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cgroup) = parts.as_ref().and_then(|p| p.cgroup.as_ref()) else { return Ok(()) };
        for procs in cgroup.join_files().map_err(|e| e.source)? {
            fs::File::from(procs).write_all(pid.to_string().as_bytes())?;
        }
        Ok(())
    }

    fn take(&self) -> Option<Parts> {
        let taken = self.parts.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(parts) = &taken {
            let _ = self.memory_kill_at_teardown.set(parts.cgroup.as_ref().and_then(WorkloadCgroup::memory_kill));
        }
        taken
    }

    /// Kill what is left in the cgroup, remove it and the tmp dir; later calls do nothing.
    pub async fn teardown(&self) {
        if let Some(parts) = self.take() {
            let _ = tokio::task::spawn_blocking(move || parts.remove()).await;
        }
    }
}

impl Drop for Enclosure {
    fn drop(&mut self) {
        let Some(parts) = self.take() else { return };
        match tokio::runtime::Handle::try_current() {
            // Off the async threads: removing a cgroup waits for its processes to go.
            Ok(runtime) => drop(runtime.spawn_blocking(move || parts.remove())),
            Err(_) => parts.remove(),
        }
    }
}

/// What to make for one process tree before it starts.
pub struct Plan {
    pub sandbox: WorkloadSandbox,
    pub limits: CgroupLimits,
    /// The deployment's `run/` dir: Landlock lets the process write there and nowhere else.
    pub run_dir: PathBuf,
    /// `<deployment>-<what>-<hash>`, unique on this node while the process lives.
    pub cgroup_name: Option<String>,
    /// Its private temporary dir, made for the instance user.
    pub tmp: Option<PathBuf>,
    /// The namespaces of a launch, which also gets its Landlock ruleset; `None` for a process
    /// that inherits both (a zygote's fork).
    pub isolation: Option<Isolation>,
    /// What the process may read besides the system directories when there is no mount
    /// namespace to hide the node's files.
    pub readable: Vec<PathBuf>,
}

/// What [`Plan::make`] made.
pub struct Made {
    pub enclosure: Enclosure,
    pub joins: Vec<OwnedFd>,
    pub landlock: Option<LandlockRuleset>,
    pub isolation: Option<namespaces::Prepared>,
}

impl Plan {
    /// Make the tmp dir, the cgroup (with its join files open) and the Landlock ruleset. On an
    /// error nothing is left behind. Blocking.
    pub fn make(self) -> Result<Made, (String, io::Error)> {
        let tmp = match &self.tmp {
            Some(tmp) => {
                let made = private_dir(tmp, self.sandbox.run_as, 0o700);
                made.map_err(|e| (format!("making its tmp dir {}", tmp.display()), e))?;
                Some(tmp.clone())
            }
            None => None,
        };
        // From here on, dropping `enclosure` undoes what was made.
        let mut enclosure = Enclosure::new(None, tmp);
        let mut joins = Vec::new();
        if let (Some(cgroups), Some(name)) = (&self.sandbox.cgroups, &self.cgroup_name) {
            let cgroup = cgroups
                .create(name, &self.limits)
                .map_err(|e| (format!("{} {}", e.what, e.path.display()), e.source))?;
            let opened = cgroup.join_files();
            let parts = enclosure.parts.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(parts) = parts.as_mut() {
                parts.cgroup = Some(cgroup);
            }
            joins = opened.map_err(|e| (format!("{} {}", e.what, e.path.display()), e.source))?;
        }
        let landlock = if self.isolation.is_some() && self.sandbox.landlock {
            let readable: Vec<&Path> = self.readable.iter().map(PathBuf::as_path).collect();
            let read_everything = self.sandbox.namespaces != Namespaces::Unavailable;
            LandlockRuleset::for_workload(&self.run_dir, &readable, read_everything)
                .map_err(|e| (e.path, io::Error::other(e.message)))?
        } else {
            None
        };
        let isolation = match self.isolation {
            Some(isolation) => Some(isolation.prepare().map_err(|e| ("preparing its namespaces".to_owned(), e))?),
            None => None,
        };
        Ok(Made { enclosure, joins, landlock, isolation })
    }
}

impl Made {
    /// The confinement of a process launched into this enclosure (`launch` adds the
    /// parent-death signal and the descriptors it keeps).
    pub fn confinement(&mut self, sandbox: &WorkloadSandbox) -> Confinement {
        sandbox.confinement(
            sandbox.run_as,
            &sandbox.rlimits,
            std::mem::take(&mut self.joins),
            self.isolation.take(),
            self.landlock.take(),
        )
    }
}

/// Make `dir` (or take the one there) as a directory of `user` with `mode`, never following a
/// symlink someone put in its place: its parent may be writable by the instance user.
/// Blocking.
pub fn private_dir(dir: &Path, user: Option<RunAs>, mode: u32) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir);
    let dir_file = match opened {
        Ok(file) => file,
        // Not a directory (a symlink, a file, a socket): replace it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            fs::remove_file(dir)?;
            return private_dir(dir, user, mode);
        }
        Err(e) => return Err(e),
    };
    if let Some(user) = user {
        std::os::unix::fs::fchown(&dir_file, Some(user.uid), Some(user.gid))?;
    }
    dir_file.set_permissions(fs::Permissions::from_mode(mode))
}

/// Whether `user` may access `path` with `mode` (`libc::R_OK`, `X_OK`, …), asked of the kernel
/// by a forked child that became `user`: exact for every parent directory, symlink and ACL.
/// Blocking (a fork and a wait).
pub fn user_may_access(user: RunAs, path: &Path, mode: libc::c_int) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: the child makes only raw system calls on values prepared before the fork, then
    // `_exit`s; it never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; raw system calls in the single-threaded child.
        unsafe {
            let none: *const libc::gid_t = std::ptr::null();
            let failed = libc::syscall(libc::SYS_setgroups, 0 as libc::size_t, none) != 0
                || libc::syscall(libc::SYS_setresgid, user.gid, user.gid, user.gid) != 0
                || libc::syscall(libc::SYS_setresuid, user.uid, user.uid, user.uid) != 0
                || libc::access(c_path.as_ptr(), mode) != 0;
            libc::_exit(if failed { *libc::__errno_location() & 0xff } else { 0 });
        }
    }
    falak_sandbox::network::wait_probe(pid, "the access probe")
}

/// Why `user` may not pass through (search) `dir`, in words — the directory in the way, with
/// its mode and owner — or `None` when it may. Blocking (a fork and a wait).
pub fn unreachable_by(user: RunAs, dir: &Path) -> Option<String> {
    let error = user_may_access(user, dir, libc::X_OK).err()?;
    let blocked =
        blocking_directory(user, &dir.join("x")).map_or_else(|| error.to_string(), |d| format!("{error}: {d}"));
    Some(blocked)
}

/// Why `user` cannot get to `path`, in words: the first directory on the way that it may not
/// search, with its mode and owner. `None` when every directory lets it through.
pub fn blocking_directory(user: RunAs, path: &Path) -> Option<String> {
    let mut dir = PathBuf::from("/");
    let parents: Vec<&std::ffi::OsStr> = match path.parent() {
        Some(parent) => parent.iter().skip(1).collect(),
        None => Vec::new(),
    };
    for component in std::iter::once(None).chain(parents.into_iter().map(Some)) {
        if let Some(component) = component {
            dir.push(component);
        }
        let meta = fs::metadata(&dir).ok()?;
        let mode = meta.mode();
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some(format!("{} is mode {:04o} owned by uid {}", dir.display(), mode & 0o7777, meta.uid()));
        }
    }
    None
}

/// The cgroup name of process tree `what` of workload `workload` (`j3-t0.a1`, `fn-greet@3` +
/// `z0`): unique on the node while the process lives (`unique`, e.g. its directory, tells apart
/// two runs of the same name, such as tests sharing a scope), and a valid directory name. Task
/// attempts and function processes are named the same way.
pub fn cgroup_name(workload: &str, what: &str, unique: &Path) -> String {
    let hash = blake3::hash(unique.as_os_str().as_bytes()).to_hex();
    let name = if what.is_empty() { workload.to_owned() } else { format!("{workload}-{what}") };
    falak_sandbox::cgroup::sanitize_name(&format!("{name}-{}", &hash.as_str()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_safe_and_differ_by_work_dir() {
        let a = cgroup_name("fn-greet@3", "i7", Path::new("/a"));
        let b = cgroup_name("fn-greet@3", "i7", Path::new("/b"));
        assert!(a.starts_with("fn-greet_3-i7-"), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_blocking_directory_names_mode_and_owner() {
        let root = tempfile::tempdir().unwrap();
        let closed = root.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let stranger = RunAs { uid: me.wrapping_add(4242), gid: 4242 };
        let said = blocking_directory(stranger, &closed.join("inner/file")).expect("a blocking dir");
        assert_eq!(said, format!("{} is mode 0700 owned by uid {me}", closed.display()));
        let me = RunAs { uid: me, gid: 0 };
        assert_eq!(blocking_directory(me, &closed.join("file")), None);
    }

    #[test]
    fn a_symlink_in_place_of_a_private_dir_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.path().join("t");
        std::os::unix::fs::symlink(&target, &dir).unwrap();
        private_dir(&dir, None, 0o700).unwrap();
        assert!(fs::symlink_metadata(&dir).unwrap().is_dir());
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o755, "the link's target is untouched");
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }
}
