//! The pure half of the cgroup code: reading `/proc/self/mountinfo` and `/proc/self/cgroup`,
//! naming a workload's cgroup, and deciding which control files get which values.

use std::path::{Path, PathBuf};

use super::{CgroupLimits, CgroupVersion, Controller};

/// One line of `/proc/self/mountinfo` that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The directory of the hierarchy that is mounted (`/` unless a container bind-mounted a
    /// sub-tree).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_options: Vec<String>,
}

/// The cgroup mounts in `mountinfo`.
pub(crate) fn parse_mountinfo(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mut before = before.split(' ');
            let (root, mount_point) = (before.nth(3)?, before.next()?);
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let super_options = after.next().unwrap_or("").split(',').map(str::to_owned).collect();
            (fstype == "cgroup" || fstype == "cgroup2").then(|| Mount {
                root: PathBuf::from(unescape(root)),
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                super_options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok());
        match (bytes[i], octal.and_then(|d| u8::from_str_radix(d, 8).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `id:controllers:path` (`0::path` for cgroup2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Membership {
    pub controllers: Vec<String>,
    pub path: PathBuf,
}

pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
            Some(Membership { controllers, path: PathBuf::from(path) })
        })
        .collect()
}

/// Where on disk the cgroup `path` (as `/proc/self/cgroup` names it) of the hierarchy mounted
/// at `mount` is. A container that bind-mounted a sub-tree shows its own cgroup as `/`, or as a
/// path outside the mounted root: then the mount point itself is the best we can see.
pub(crate) fn cgroup_dir(mount: &Mount, path: &Path) -> PathBuf {
    let relative = path.strip_prefix(&mount.root).unwrap_or(Path::new(""));
    mount.mount_point.join(relative)
}

/// The v1 mount carrying `controller` (`cpu` must not match `cpuacct` or `cpuset` alone).
pub(crate) fn v1_mount(mounts: &[Mount], controller: Controller) -> Option<&Mount> {
    mounts.iter().find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == controller.name()))
}

/// This process's cgroup in the v1 hierarchy of `controller`, or in cgroup2 (`None`).
pub(crate) fn own_path(memberships: &[Membership], controller: Option<Controller>) -> Option<&Path> {
    memberships
        .iter()
        .find(|m| match controller {
            Some(c) => m.controllers.iter().any(|name| name == c.name()),
            None => m.controllers.is_empty(),
        })
        .map(|m| m.path.as_path())
}

/// A directory name for a workload: letters, digits, `.`, `_` and `-` kept, anything else
/// turned into `_`, at most 200 bytes, never `.`/`..` or a name the kernel reserves.
pub fn sanitize_name(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(200)
        .collect();
    if clean.is_empty() || clean.starts_with('.') || clean.starts_with("cgroup") {
        clean.insert(0, 'w');
    }
    clean
}

/// What to write where, in order: `(controller, file, value)`. Files the host lacks (swap
/// accounting off) are left out by the caller's `features`.
pub(crate) fn limit_writes(
    version: CgroupVersion,
    features: &Features,
    limits: &CgroupLimits,
) -> Vec<(Controller, &'static str, String)> {
    let mut writes = Vec::new();
    match version {
        CgroupVersion::V2 => {
            if let Some(bytes) = limits.memory_bytes {
                writes.push((Controller::Memory, "memory.max", bytes.to_string()));
                if features.swap {
                    writes.push((Controller::Memory, "memory.swap.max", "0".into()));
                }
                if features.oom_group {
                    // One process over the limit takes its whole workload down with it, as
                    // the exit reason will say.
                    writes.push((Controller::Memory, "memory.oom.group", "1".into()));
                }
            }
            if let Some(millis) = limits.cpu_millis {
                writes.push((Controller::Cpu, "cpu.weight", cpu_weight(millis).to_string()));
            }
            if let Some(pids) = limits.max_pids {
                writes.push((Controller::Pids, "pids.max", pids.to_string()));
            }
        }
        CgroupVersion::V1 => {
            if let Some(bytes) = limits.memory_bytes {
                writes.push((Controller::Memory, "memory.limit_in_bytes", bytes.to_string()));
                if features.swap {
                    // memory+swap may not be below memory, so it comes second.
                    writes.push((Controller::Memory, "memory.memsw.limit_in_bytes", bytes.to_string()));
                }
            }
            if let Some(millis) = limits.cpu_millis {
                writes.push((Controller::Cpu, "cpu.shares", cpu_shares(millis).to_string()));
            }
            if let Some(pids) = limits.max_pids {
                writes.push((Controller::Pids, "pids.max", pids.to_string()));
            }
        }
    }
    writes
}

/// CPU is a *share*, not a cap: a workload's `cpu` is what placement reserves for it and its
/// weight when CPUs are contended, but an idle CPU is not withheld from it (Nomad's and
/// Kubernetes' request semantics). A hard quota throttled a 100m Python function to a tenth of
/// a core even on an idle node. v2 `cpu.weight`: 100 per core (the kernel's default weight is
/// one core's), 1 to 10,000.
fn cpu_weight(millis: u64) -> u64 {
    (millis / 10).clamp(1, 10_000)
}

/// v1 `cpu.shares`: 1,024 per core (the kernel's default), at least 2.
fn cpu_shares(millis: u64) -> u64 {
    (millis.saturating_mul(1024) / 1000).max(2)
}

/// Optional control files, found in the node's parent cgroup at detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Features {
    /// v2 `memory.swap.max` / v1 `memory.memsw.limit_in_bytes` (swap accounting is on).
    pub swap: bool,
    /// v2 `memory.oom.group`.
    pub oom_group: bool,
    /// v2 `cgroup.kill` (Linux 5.14).
    pub kill: bool,
    /// v2 `cgroup.freeze` (Linux 5.2).
    pub freeze: bool,
}

/// The `oom_kill` count from v2 `memory.events` or v1 `memory.oom_control` (same format:
/// `key value` lines).
pub(crate) fn oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// Pids from a `cgroup.procs` file.
pub(crate) fn parse_pids(text: &str) -> Vec<libc::pid_t> {
    text.lines().filter_map(|line| line.trim().parse().ok()).filter(|pid| *pid > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys ro,nosuid shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
36 33 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:12 - cgroup cgroup rw,cpu,cpuacct
37 33 0:32 / /sys/fs/cgroup/cpuset rw shared:13 - cgroup cgroup rw,cpuset
38 33 0:33 /docker/abc /sys/fs/cgroup/memory rw shared:14 - cgroup cgroup rw,memory
39 33 0:34 / /sys/fs/cgroup/my\\040pids rw shared:15 - cgroup cgroup rw,pids
";

    #[test]
    fn mountinfo_yields_cgroup_mounts_with_their_controllers() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        let cpu = v1_mount(&mounts, Controller::Cpu).unwrap();
        assert_eq!(cpu.mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(v1_mount(&mounts, Controller::Pids).unwrap().mount_point, Path::new("/sys/fs/cgroup/my pids"));
        assert_eq!(v1_mount(&mounts, Controller::Freezer), None);
        let memory = v1_mount(&mounts, Controller::Memory).unwrap();
        assert_eq!(memory.root, Path::new("/docker/abc"));
        // A container sees its own cgroup under the bind-mounted root.
        assert_eq!(cgroup_dir(memory, Path::new("/docker/abc/sub")), Path::new("/sys/fs/cgroup/memory/sub"));
        assert_eq!(cgroup_dir(memory, Path::new("/elsewhere")), Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn proc_cgroup_names_this_process_s_cgroups() {
        let memberships = parse_proc_cgroup("9:name=systemd:/\n4:memory:/process_api/4d3c\n1:cpu,cpuacct:/\n0::/\n");
        assert_eq!(own_path(&memberships, Some(Controller::Memory)), Some(Path::new("/process_api/4d3c")));
        assert_eq!(own_path(&memberships, Some(Controller::Cpu)), Some(Path::new("/")));
        assert_eq!(own_path(&memberships, Some(Controller::Pids)), None);
        assert_eq!(own_path(&memberships, None), Some(Path::new("/")));
    }

    #[test]
    fn names_are_safe_directory_names() {
        assert_eq!(sanitize_name("j12-t3-1"), "j12-t3-1");
        assert_eq!(sanitize_name("../etc/x y"), "w.._etc_x_y");
        assert_eq!(sanitize_name("cgroup.procs"), "wcgroup.procs");
        assert_eq!(sanitize_name(""), "w");
        assert_eq!(sanitize_name(&"a".repeat(300)).len(), 200);
    }

    #[test]
    fn limits_become_control_file_writes() {
        let limits = CgroupLimits { memory_bytes: Some(64 << 20), cpu_millis: Some(500), max_pids: Some(64) };
        let all = Features { swap: true, oom_group: true, kill: true, freeze: true };
        let show = |writes: Vec<(Controller, &str, String)>| {
            writes.iter().map(|(_, file, value)| format!("{file}={value}")).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            show(limit_writes(CgroupVersion::V2, &all, &limits)),
            "memory.max=67108864 memory.swap.max=0 memory.oom.group=1 cpu.weight=50 pids.max=64"
        );
        assert_eq!(
            show(limit_writes(CgroupVersion::V1, &all, &limits)),
            "memory.limit_in_bytes=67108864 memory.memsw.limit_in_bytes=67108864 cpu.shares=512 pids.max=64"
        );
        let none = Features::default();
        let tiny = CgroupLimits { memory_bytes: Some(1), cpu_millis: Some(1), max_pids: None };
        assert_eq!(show(limit_writes(CgroupVersion::V2, &none, &tiny)), "memory.max=1 cpu.weight=1");
        assert_eq!(show(limit_writes(CgroupVersion::V1, &none, &CgroupLimits::default())), "");
    }

    #[test]
    fn oom_kills_and_pids_are_read() {
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n"), Some(2));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"), Some(0));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_pids("12\n345\n\n"), vec![12, 345]);
    }
}
