//! One cgroup per workload: memory, CPU and process limits, exact accounting, and a kill that
//! reaches every process the workload made — also those that left its process group.
//!
//! **Layout.** The node's workloads live under `<parent>/falak/<scope>/<workload>`, where
//! `<scope>` is unique to the node on this host (its id: several nodes may share a machine)
//! and `<workload>` comes from [`sanitize_name`]. The parent is the node's own cgroup, so its
//! workloads count against whatever limits the host put on the node; on cgroup v2, where a
//! cgroup with processes of its own may not hand controllers to children, the parent is the
//! hierarchy's root instead when the node's own cgroup refuses.
//!
//! **Detection** ([`Cgroups::detect`]): cgroup v2 when a `cgroup2` mount offers the memory and
//! pids controllers (cpu too when it has it) and they can be enabled down to the node's scope;
//! otherwise cgroup v1, one hierarchy per controller (memory, cpu, pids, and freezer for the
//! kill); otherwise an error naming what was tried, after which the executor runs without
//! cgroups and says so.
//!
//! **Limits** (from [`CgroupLimits`]): v2 `memory.max`, `memory.swap.max = 0` and
//! `memory.oom.group = 1` when present, `cpu.weight`, `pids.max`; v1 `memory.limit_in_bytes`,
//! `memory.memsw.limit_in_bytes` when swap accounting is on, `cpu.shares`, `pids.max`. CPU is a
//! proportional share, not a cap (see `plan::cpu_weight`).
//!
//! **Joining.** [`WorkloadCgroup::join_files`] opens every `cgroup.procs`; the child writes
//! `0` to each before `exec`, so there is no moment in which the workload runs, or forks,
//! outside its cgroups.
//!
//! **Kill** ([`WorkloadCgroup::kill_all`]): v2 `cgroup.kill` when present; otherwise freeze
//! (v2 `cgroup.freeze`, v1 `freezer.state`), SIGKILL every listed process, thaw, until the
//! cgroup is empty. Without a freezer the loop still converges: `pids.max` bounds how fast a
//! workload can make new processes.
//!
//! **Memory kills** ([`WorkloadCgroup::memory_kill`]): v2 `memory.events` and v1
//! `memory.oom_control` count `oom_kill`s, so the executor can say the workload was killed by
//! its memory limit rather than by "signal 9".
//!
//! The file writes go through plain paths, so tests point a [`Cgroups`] at a temporary
//! directory with [`Cgroups::at_v1`] or [`Cgroups::at_v2`].

mod plan;

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use plan::sanitize_name;
use plan::{Features, Mount, limit_writes};

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        })
    }
}

/// A cgroup controller the sandbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
    /// v1 only (v2 has `cgroup.freeze` in every cgroup): used to kill without races.
    Freezer,
}

impl Controller {
    /// The limits a workload asks for; the freezer is a tool, not a limit.
    pub const LIMITS: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A workload's cgroup limits; `None` leaves that resource unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a core: 500 is half a core, 2000 two cores.
    pub cpu_millis: Option<u64>,
    /// Processes and threads together, as the kernel counts them.
    pub max_pids: Option<u64>,
}

/// The node's parent cgroups, found once at startup.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: CgroupVersion,
    /// The node's scope directory per controller it can use (v2: the same directory for all).
    scopes: Vec<(Controller, PathBuf)>,
    features: Features,
}

/// No cgroup controller can be used; the reasons say what was tried.
#[derive(Debug, thiserror::Error)]
#[error("no cgroup controller is usable: {}", reasons.join("; "))]
pub struct CgroupUnavailable {
    pub reasons: Vec<String>,
}

/// A workload's cgroup could not be made or filled; nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {source}")]
pub struct CgroupError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl Cgroups {
    /// Find the host's cgroups and make the node's scope, `falak/<scope>`, under the node's
    /// own cgroup (see the module doc). Blocking.
    pub fn detect(scope: &str) -> Result<Cgroups, CgroupUnavailable> {
        let read = |path: &str| fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        let (mountinfo, own) = match (read("/proc/self/mountinfo"), read("/proc/self/cgroup")) {
            (Ok(m), Ok(o)) => (m, o),
            (Err(e), _) | (_, Err(e)) => return Err(CgroupUnavailable { reasons: vec![e] }),
        };
        let mounts = plan::parse_mountinfo(&mountinfo);
        let memberships = plan::parse_proc_cgroup(&own);
        let scope = sanitize_name(scope);
        let mut reasons = Vec::new();

        let v2 = detect_v2(&mounts, &memberships, &scope, &mut reasons);
        let complete = |c: &Cgroups| [Controller::Memory, Controller::Pids].iter().all(|w| c.controllers().contains(w));
        if let Some(v2) = v2.as_ref().filter(|c| complete(c)) {
            return Ok(v2.clone());
        }
        let v1 = detect_v1(&mounts, &memberships, &scope, &mut reasons);
        // Prefer whichever offers more of the limits (a hybrid host may split them).
        let count = |c: &Option<Cgroups>| c.as_ref().map_or(0, |c| Controller::LIMITS.len() - c.missing().len());
        let best = if count(&v1) >= count(&v2) { v1 } else { v2 };
        best.filter(|c| !c.controllers().is_empty()).ok_or(CgroupUnavailable { reasons })
    }

    /// cgroup v1 with the given scope directories (which must exist), for tests.
    pub fn at_v1(scopes: Vec<(Controller, PathBuf)>) -> Cgroups {
        let features = scopes
            .iter()
            .find(|(c, _)| *c == Controller::Memory)
            .map(|(_, dir)| Features { swap: dir.join("memory.memsw.limit_in_bytes").exists(), ..Features::default() })
            .unwrap_or_default();
        Cgroups { version: CgroupVersion::V1, scopes, features }
    }

    /// cgroup v2 with the given scope directory (which must exist) and controllers, for tests.
    pub fn at_v2(scope: PathBuf, controllers: &[Controller]) -> Cgroups {
        let features = Features {
            swap: scope.join("memory.swap.max").exists(),
            oom_group: scope.join("memory.oom.group").exists(),
            kill: scope.join("cgroup.kill").exists(),
            freeze: scope.join("cgroup.freeze").exists(),
        };
        let scopes = controllers.iter().map(|c| (*c, scope.clone())).collect();
        Cgroups { version: CgroupVersion::V2, scopes, features }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The controllers in use, freezer included on v1.
    pub fn controllers(&self) -> Vec<Controller> {
        self.scopes.iter().map(|(c, _)| *c).collect()
    }

    /// The limit controllers (memory, cpu, pids) the host does not let the node use.
    pub fn missing(&self) -> Vec<Controller> {
        Controller::LIMITS.into_iter().filter(|c| !self.controllers().contains(c)).collect()
    }

    /// Where the node's scope for `controller` is, if it uses it.
    pub fn scope_dir(&self, controller: Controller) -> Option<&Path> {
        self.scopes.iter().find(|(c, _)| *c == controller).map(|(_, dir)| dir.as_path())
    }

    /// Kill and remove every workload cgroup left in the node's scope, e.g. by a node that
    /// crashed: its workloads would run on unwatched. Returns how many were removed. Only for
    /// a scope no other running node uses. Blocking.
    pub fn remove_leftovers(&self) -> usize {
        let mut names: Vec<String> = Vec::new();
        for (_, dir) in &self.scopes {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_dir && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let mut removed = 0;
        for name in names {
            let leftover = self.workload(&name);
            match leftover.remove() {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(cgroup = %name, error = %e, "cannot remove a leftover workload cgroup"),
            }
        }
        removed
    }

    /// Remove the node's scope directories, killing and removing any workload cgroup still in
    /// them: for a node that shuts down cleanly, and for tests. Blocking.
    pub fn remove_scope(&self) -> io::Result<()> {
        self.remove_leftovers();
        for (_, dir) in &self.scopes {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", dir.display()))),
            }
            // `falak/` too, once no node has a scope in it (another node's keeps it busy).
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    /// Make the cgroup for workload `name` (sanitized) with `limits`. A cgroup of the same name
    /// left by an earlier run is killed and removed first. Blocking.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<WorkloadCgroup, CgroupError> {
        let workload = self.workload(&sanitize_name(name));
        if workload.dirs.iter().any(|d| d.exists()) {
            workload.remove().map_err(|source| CgroupError {
                what: "remove the leftover cgroup",
                path: workload.dirs[0].clone(),
                source,
            })?;
        }
        let made = self.fill(&workload, limits);
        if made.is_err() {
            let _ = workload.remove();
        }
        made.map(|()| workload)
    }

    fn fill(&self, workload: &WorkloadCgroup, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for dir in &workload.dirs {
            fs::create_dir(dir).map_err(|source| CgroupError { what: "create", path: dir.clone(), source })?;
        }
        for (controller, file, value) in limit_writes(self.version, &self.features, limits) {
            let Some(dir) = workload.dir(controller) else { continue };
            let path = dir.join(file);
            write_control(&path, &value).map_err(|source| CgroupError { what: "write", path, source })?;
        }
        Ok(())
    }

    fn workload(&self, name: &str) -> WorkloadCgroup {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let by_controller: Vec<(Controller, PathBuf)> =
            self.scopes.iter().map(|(c, scope)| (*c, scope.join(name))).collect();
        for (_, dir) in &by_controller {
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        WorkloadCgroup { version: self.version, features: self.features, dirs, by_controller }
    }
}

/// Try cgroup v2: the mount's controllers enabled down to `falak/<scope>`, under the node's
/// own cgroup or else under the root.
fn detect_v2(
    mounts: &[Mount],
    memberships: &[plan::Membership],
    scope: &str,
    reasons: &mut Vec<String>,
) -> Option<Cgroups> {
    let Some(mount) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        reasons.push("no cgroup2 mount".into());
        return None;
    };
    let own = plan::own_path(memberships, None).map(|path| plan::cgroup_dir(mount, path));
    let mut bases = vec![];
    if let Some(own) = own.filter(|own| *own != mount.mount_point) {
        bases.push(own);
    }
    bases.push(mount.mount_point.clone());
    for base in bases {
        let offered = read_words(&base.join("cgroup.controllers"));
        let wanted: Vec<Controller> =
            Controller::LIMITS.into_iter().filter(|c| offered.iter().any(|w| w == c.name())).collect();
        if wanted.is_empty() {
            reasons.push(format!(
                "cgroup2 at {} offers none of memory, cpu, pids (only: {})",
                base.display(),
                offered.join(" ")
            ));
            continue;
        }
        let dirs = [base.clone(), base.join("falak"), base.join("falak").join(scope)];
        let enabled = (|| -> io::Result<Vec<Controller>> {
            for (i, dir) in dirs.iter().enumerate() {
                if i > 0 && !dir.exists() {
                    fs::create_dir(dir)?;
                }
                for controller in &wanted {
                    // One at a time: a controller the parent lacks must not veto the others.
                    let _ = write_control(&dir.join("cgroup.subtree_control"), &format!("+{controller}"));
                }
            }
            let enabled = read_words(&dirs[2].join("cgroup.subtree_control"));
            Ok(wanted.iter().copied().filter(|c| enabled.iter().any(|w| w == c.name())).collect())
        })();
        match enabled {
            Ok(enabled) if !enabled.is_empty() => {
                let mut cgroups = Cgroups::at_v2(dirs[2].clone(), &enabled);
                // Features live in non-root cgroups: the scope has them all.
                cgroups.features.kill = dirs[2].join("cgroup.kill").exists();
                cgroups.features.freeze = dirs[2].join("cgroup.freeze").exists();
                return Some(cgroups);
            }
            Ok(_) => reasons.push(format!(
                "cannot enable the memory, cpu or pids controller for children of {} (a cgroup with processes of its own cannot delegate them)",
                base.display()
            )),
            Err(e) => reasons.push(format!("cannot create the node's cgroup under {}: {e}", base.display())),
        }
        // Leave nothing half made in the node's own cgroup.
        let _ = fs::remove_dir(&dirs[2]);
        let _ = fs::remove_dir(&dirs[1]);
    }
    None
}

/// Try cgroup v1: one hierarchy per controller, the scope under the node's own cgroup there.
fn detect_v1(
    mounts: &[Mount],
    memberships: &[plan::Membership],
    scope: &str,
    reasons: &mut Vec<String>,
) -> Option<Cgroups> {
    let mut scopes = Vec::new();
    for controller in [Controller::Memory, Controller::Cpu, Controller::Pids, Controller::Freezer] {
        let Some(mount) = plan::v1_mount(mounts, controller) else {
            reasons.push(format!("no cgroup v1 {controller} hierarchy"));
            continue;
        };
        let own = plan::own_path(memberships, Some(controller)).unwrap_or(Path::new("/"));
        let dir = plan::cgroup_dir(mount, own).join("falak").join(scope);
        match fs::create_dir_all(&dir) {
            Ok(()) => scopes.push((controller, dir)),
            Err(e) => reasons.push(format!("cannot create {}: {e}", dir.display())),
        }
    }
    (!scopes.is_empty()).then(|| Cgroups::at_v1(scopes))
}

/// One workload's cgroup (on v1, one directory per controller).
#[derive(Debug)]
pub struct WorkloadCgroup {
    version: CgroupVersion,
    features: Features,
    /// Each directory once.
    dirs: Vec<PathBuf>,
    by_controller: Vec<(Controller, PathBuf)>,
}

/// What a workload's cgroup counts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CgroupUsage {
    pub processes: u32,
    pub memory_bytes: Option<u64>,
}

/// How many times a SIGKILL sweep may run before the kill gives up (each waits 5 ms).
const KILL_ROUNDS: u32 = 400;

impl WorkloadCgroup {
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory holding `controller`'s files for this workload.
    pub fn dir(&self, controller: Controller) -> Option<&Path> {
        self.by_controller.iter().find(|(c, _)| *c == controller).map(|(_, d)| d.as_path())
    }

    /// On cgroup v2, this cgroup as a path from the root of the hierarchy (`/falak/...`), the
    /// form an OCI runtime's `cgroupsPath` takes; `None` on v1, where each controller has its
    /// own hierarchy.
    pub fn unified_path(&self) -> Option<String> {
        if self.version != CgroupVersion::V2 {
            return None;
        }
        let dir = self.dirs.first()?;
        // Every v2 cgroup has `cgroup.controllers`, the root included: the highest directory
        // that has it is the hierarchy's root.
        let root = dir.ancestors().take_while(|d| d.join("cgroup.controllers").exists()).last()?;
        Some(format!("/{}", dir.strip_prefix(root).ok()?.display()))
    }

    /// Every `cgroup.procs`, open for writing and close-on-exec: the child writes `0` to each
    /// before `exec` (see [`Confinement`](crate::Confinement)).
    pub fn join_files(&self) -> Result<Vec<OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupError { what: "open", path, source })
            })
            .collect()
    }

    /// The processes in the cgroup now, those of the cgroups the workload made inside it
    /// included (an OCI runtime puts its container in one).
    pub fn pids(&self) -> io::Result<Vec<libc::pid_t>> {
        let dir = self.kill_dir();
        let mut pids = plan::parse_pids(&fs::read_to_string(dir.join("cgroup.procs"))?);
        for nested in nested_dirs(dir) {
            // A nested cgroup may go between the listing and the read.
            if let Ok(procs) = fs::read_to_string(nested.join("cgroup.procs")) {
                pids.extend(plan::parse_pids(&procs));
            }
        }
        Ok(pids)
    }

    /// The directory whose `cgroup.procs` the kill reads: the freezer's on v1 (frozen
    /// processes cannot fork), else any.
    fn kill_dir(&self) -> &Path {
        self.dir(Controller::Freezer)
            .or_else(|| self.dir(Controller::Pids))
            .unwrap_or_else(|| self.dirs.first().map_or(Path::new("/nonexistent"), PathBuf::as_path))
    }

    /// SIGKILL every process in the cgroup and wait (up to about two seconds) until none is
    /// left. Blocking.
    pub fn kill_all(&self) -> io::Result<()> {
        if self.dirs.is_empty() || !self.kill_dir().exists() {
            return Ok(());
        }
        if self.version == CgroupVersion::V2 && self.features.kill {
            write_control(&self.dirs[0].join("cgroup.kill"), "1")?;
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            let frozen = self.freeze(true);
            for pid in self.pids().unwrap_or(pids) {
                // SAFETY: kill takes plain integers; a pid that is gone gives ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if frozen {
                self.freeze(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = self.pids()?.len();
        Err(io::Error::other(format!("{left} processes still in the cgroup after SIGKILL")))
    }

    /// Freeze (or thaw) the cgroup; whether it has a freezer.
    fn freeze(&self, frozen: bool) -> bool {
        let (path, value, done) = match (self.version, self.dir(Controller::Freezer)) {
            (CgroupVersion::V1, Some(dir)) => {
                (dir.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" }, "FROZEN")
            }
            (CgroupVersion::V2, _) if self.features.freeze => {
                (self.dirs[0].join("cgroup.freeze"), if frozen { "1" } else { "0" }, "frozen 1")
            }
            _ => return false,
        };
        if write_control(&path, value).is_err() {
            return false;
        }
        if frozen {
            // Freezing is asynchronous; wait a little for it (a process in an uninterruptible
            // sleep may hold it up, and the kill works regardless).
            let state = if self.version == CgroupVersion::V1 { path } else { self.dirs[0].join("cgroup.events") };
            for _ in 0..100 {
                if fs::read_to_string(&state).is_ok_and(|s| s.contains(done)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        true
    }

    /// The memory limit when the kernel killed a process of this cgroup for going over it.
    pub fn memory_kill(&self) -> Option<u64> {
        let dir = self.dir(Controller::Memory)?;
        let (events, limit) = match self.version {
            CgroupVersion::V2 => ("memory.events", "memory.max"),
            CgroupVersion::V1 => ("memory.oom_control", "memory.limit_in_bytes"),
        };
        // v1 counts a kill only in the cgroup of the process killed (v2 counts it upwards too),
        // which may be one the workload made inside its own.
        let kills: u64 = std::iter::once(dir.to_path_buf())
            .chain(nested_dirs(dir))
            .filter_map(|d| plan::oom_kills(&fs::read_to_string(d.join(events)).ok()?))
            .sum();
        let limit = fs::read_to_string(dir.join(limit)).ok()?.trim().parse().ok()?;
        (kills > 0).then_some(limit)
    }

    /// Live processes and memory in use.
    pub fn usage(&self) -> CgroupUsage {
        let processes = self.pids().map_or(0, |p| p.len() as u32);
        let file = match self.version {
            CgroupVersion::V2 => "memory.current",
            CgroupVersion::V1 => "memory.usage_in_bytes",
        };
        let memory_bytes = self
            .dir(Controller::Memory)
            .and_then(|dir| fs::read_to_string(dir.join(file)).ok())
            .and_then(|s| s.trim().parse().ok());
        CgroupUsage { processes, memory_bytes }
    }

    /// Kill what is left and remove the directories. Blocking.
    pub fn remove(&self) -> io::Result<()> {
        let killed = self.kill_all();
        let mut result = killed;
        // Nested cgroups first (deepest first), then the workload's own.
        let dirs = self.dirs.iter().flat_map(|dir| nested_dirs(dir).into_iter().chain(std::iter::once(dir.clone())));
        for dir in dirs.collect::<Vec<_>>() {
            let dir = &dir;
            // The last processes may take a moment to leave after SIGKILL.
            let mut removed = fs::remove_dir(dir);
            for _ in 0..200 {
                match &removed {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(5));
                        removed = fs::remove_dir(dir);
                    }
                    _ => break,
                }
            }
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    result = result.and(Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", dir.display()))))
                }
            }
        }
        result
    }
}

/// The cgroups inside `dir`, deepest first (the order they can be removed in); none when it
/// cannot be read.
fn nested_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            found.extend(nested_dirs(&path));
            found.push(path);
        }
    }
    found
}

/// Write a control file the way `echo value > file` does.
fn write_control(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

/// The words of a file such as `cgroup.controllers`; none when it cannot be read.
fn read_words(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap_or_default().split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests;
