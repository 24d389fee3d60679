//! Containers: a task attempt whose process is an OCI runtime (`runc` or `crun`) running the
//! attempt's bundle in the foreground.
//!
//! The runtime is started the way every task process is ([`crate::ProcessExecutor`]): in the
//! attempt's session and process group, with its stdio on the attempt's files, in the attempt's
//! cgroup (on cgroup v1 the runtime joins it and puts the container in a cgroup inside it; on
//! v2 the runtime is told the attempt's cgroup, since v2 allows no processes beside child
//! cgroups), watched by the same monitor, stopped the same way (SIGTERM to the group, which the
//! runtime passes to the container, then SIGKILL to the group and every process in the cgroup).
//! So logs, exit codes, timeouts, disk limits, memory kills and cancel work as for processes.
//!
//! The bundle lives in the attempt's working directory (`bundle/config.json`, `bundle/rootfs`):
//! - the image's root filesystem, unpacked once per node and shared read-only, is the lower
//!   layer of an overlay whose upper layer (`upper/`) holds what the container writes. The
//!   overlay is mounted in a mount namespace of the runtime's own ([`falak_sandbox::overlay`]),
//!   so it goes away with the container, also when the node is killed;
//! - where the node cannot mount an overlay (it is not root), the root filesystem is copied.
//!
//! The container gets its own pid, ipc, uts and mount namespaces, a network namespace unless it
//! asks for the host's, the runtime's default capabilities (`AUDIT_WRITE`, `KILL`,
//! `NET_BIND_SERVICE`), `no_new_privileges`, the usual masked and read-only paths, and no core
//! files. On a node that is not root the runtime runs rootless: a user namespace maps the
//! container's user to the node's own uid.
//!
//! The runtime runs with `--keep`; after it ends and the node has read the cgroups (a memory
//! kill is counted in the container's), the attempt's cgroup is torn down with the container's
//! inside it, and `delete --force` removes the runtime's state.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use falak_sandbox::{Network, PrivateOverlay, RunAs};
use oci_spec::runtime::{
    LinuxIdMappingBuilder, LinuxNamespaceType, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Spec, UserBuilder,
};

use crate::sandbox::SandboxGroup;
use crate::task::TaskSpec;

/// What a task needs to run as a container, beside its [`TaskSpec`] (whose `command` is the
/// container's process and whose `env` is its whole environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerTask {
    /// The image's unpacked root filesystem, read-only and shared by every container of it.
    pub rootfs: PathBuf,
    /// The working directory inside the container (absolute).
    pub cwd: String,
    /// The container's user, as ids inside it.
    pub user: RunAs,
    /// Host directories bound read-only into the container.
    pub mounts: Vec<ReadOnlyMount>,
}

/// A host directory seen read-only at `destination` inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyMount {
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub destination: String,
}

/// What a container runs, in the runtime's terms: a task attempt's ([`ContainerProcess::of_task`])
/// or a function instance's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProcess {
    /// The process and its arguments.
    pub args: Vec<String>,
    /// Its whole environment (`PATH` is added when absent).
    pub env: std::collections::BTreeMap<String, String>,
    pub network: Network,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// A host directory bound writable into the container (a function instance's socket
    /// directory, owned by the container's user).
    pub writable: Option<ReadOnlyMount>,
}

impl ContainerProcess {
    /// A task attempt's: its command, its environment with `FALAK_TASK_ID` and `FALAK_ATTEMPT`.
    pub fn of_task(spec: &TaskSpec) -> ContainerProcess {
        let mut env = spec.env.clone();
        env.insert("FALAK_TASK_ID".into(), spec.task_id.clone());
        env.insert("FALAK_ATTEMPT".into(), spec.attempt.to_string());
        ContainerProcess {
            args: spec.command.clone(),
            env,
            network: spec.network,
            open_files: spec.limits.max_open_files.unwrap_or(1024),
            writable: None,
        }
    }
}

/// The OCI runtime a node runs containers with.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    /// The runtime's executable.
    pub program: PathBuf,
    /// `--root`: the runtime's state, one directory per node.
    pub state_dir: PathBuf,
    /// Whether containers get an overlay over the image (else a copy of it).
    pub overlay: bool,
    /// The node is not root: the runtime runs rootless.
    pub rootless: bool,
    /// What `--version` said first, for the node's log.
    pub version: String,
}

/// Why the node cannot run containers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot run containers with {program:?}: {reason}")]
pub struct RuntimeUnavailable {
    pub program: String,
    pub reason: String,
}

impl ContainerRuntime {
    /// Find `program` (`runc`, `crun`, or a path), check that it answers `--version`, make
    /// `state_dir` and find out whether this node can give containers an overlay. Blocking.
    pub fn detect(program: &str, state_dir: PathBuf) -> Result<ContainerRuntime, RuntimeUnavailable> {
        let unavailable = |reason: String| RuntimeUnavailable { program: program.to_owned(), reason };
        let path = find_program(program, std::env::var_os("PATH").as_deref()).ok_or_else(|| {
            unavailable(format!(
                "not found in PATH ({}) nor in {}; install it (Debian: `apt-get install runc` or `crun`) or \
                 set `container_runtime` in the node config to its path",
                std::env::var("PATH").unwrap_or_default(),
                crate::DEFAULT_PATH
            ))
        })?;
        let output = Command::new(&path).arg("--version").output().map_err(|e| unavailable(e.to_string()))?;
        if !output.status.success() {
            return Err(unavailable(format!("`{} --version` failed: {}", path.display(), output.status)));
        }
        let version = String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().to_owned();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(|e| unavailable(format!("cannot make its state directory {}: {e}", state_dir.display())))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let rootless = unsafe { libc::geteuid() } != 0;
        let overlay = !rootless && falak_sandbox::overlay_works(&state_dir.join("overlay-probe")).is_ok();
        Ok(ContainerRuntime { program: path, state_dir, overlay, rootless, version })
    }

    /// The runtime's arguments that run `bundle` in the foreground as container `id`, with its
    /// state in `state_dir` (the node's [`ContainerRuntime::state_dir`], or one of the
    /// container's own that goes with it). `--keep`: the container's cgroup outlives it until
    /// the node has read why it ended (a memory kill is counted in it) and tears it down with
    /// the attempt's.
    pub fn run_args(state_dir: &Path, bundle: &Path, id: &str) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--root".into(), state_dir.into()];
        args.extend(["run".into(), "--keep".into(), "--bundle".into(), bundle.into(), id.into()]);
        args
    }

    /// Delete every container in the node's state dir: at the node's start, what a killed run
    /// left (the runtime died with the node; where no cgroup holds the container, it still
    /// runs). Blocking; the number deleted.
    pub fn remove_leftovers(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.state_dir) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            let id = entry.file_name().to_string_lossy().into_owned();
            if id == "overlay-probe" {
                continue;
            }
            let deleted = self.delete_command(&self.state_dir, &id).status();
            if let Err(error) = deleted {
                tracing::warn!(%error, container = %id, "cannot delete a leftover container");
            }
            let _ = fs::remove_dir_all(entry.path());
            removed += 1;
        }
        removed
    }

    /// `delete --force` of container `id` with its state in `state_dir` (no stdin, output
    /// discarded): kills what is left of it (its init, and so its pid namespace) and removes
    /// its state. What stops a container
    /// whose runtime was killed where no cgroup holds it (a rootless node).
    pub fn delete_command(&self, state_dir: &Path, id: &str) -> Command {
        delete_command(&self.program, state_dir, id)
    }
}

/// With no stdin and its output discarded: run for its effect.
fn delete_command(program: &Path, state_dir: &Path, id: &str) -> Command {
    let mut command = Command::new(program);
    command.arg("--root").arg(state_dir).args(["delete", "--force", id]);
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    command
}

/// `program` when it is a path, else the first executable of that name in `path` (the node's
/// `PATH`), then in the system directories of [`DEFAULT_PATH`](crate::DEFAULT_PATH): Debian
/// installs runc in `/usr/sbin`, which an ordinary user's `PATH` often leaves out.
fn find_program(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    let dirs = path.into_iter().flat_map(std::env::split_paths);
    let system = std::env::split_paths(crate::DEFAULT_PATH);
    dirs.chain(system).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The container id of an attempt: unique among the node's attempts, in the characters every
/// runtime accepts.
pub(crate) fn container_id(spec: &TaskSpec) -> String {
    let raw = format!("{}.a{}", spec.task_id, spec.attempt);
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

/// A container's bundle, written.
pub struct Bundle {
    pub dir: PathBuf,
    /// The overlay the runtime's process mounts before it starts, when there is one.
    pub overlay: Option<PrivateOverlay>,
}

/// Write the bundle of a container in `workdir` (the node's, not the container's to write):
/// `bundle/config.json`, and the root filesystem (an overlay's directories `upper/` and
/// `overlay-work/`, or a copy of the image in `bundle/rootfs`). `cgroups_path` is the cgroup
/// v2 path the runtime puts the container in. Blocking.
pub fn write_bundle(
    runtime: &ContainerRuntime,
    workdir: &Path,
    process: &ContainerProcess,
    container: &ContainerTask,
    cgroups_path: Option<String>,
) -> io::Result<Bundle> {
    let dir = workdir.join("bundle");
    let rootfs = dir.join("rootfs");
    for d in [&dir, &rootfs] {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    // The root of the container's file system must be searchable by its user.
    fs::set_permissions(&rootfs, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let overlay = if runtime.overlay {
        let (upper, work) = (workdir.join("upper"), workdir.join("overlay-work"));
        for d in [&upper, &work] {
            fs::create_dir_all(d)?;
        }
        Some(PrivateOverlay::new(&container.rootfs, &upper, &work, &rootfs)?)
    } else {
        crate::code::copy_tree(&container.rootfs, &rootfs, None)?;
        None
    };
    let config = config(process, container, runtime.rootless, cgroups_path);
    let json = serde_json::to_vec_pretty(&config).map_err(io::Error::other)?;
    fs::write(dir.join("config.json"), json)?;
    Ok(Bundle { dir, overlay })
}

/// The runtime configuration of one container.
fn config(process: &ContainerProcess, container: &ContainerTask, rootless: bool, cgroups_path: Option<String>) -> Spec {
    let mut config = if rootless {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut config = Spec::rootless(uid, gid);
        // Map the container's own user (not always root) to the node's.
        if let Some(linux) = config.linux_mut() {
            let map = |inside: u32, outside: u32| {
                LinuxIdMappingBuilder::default().container_id(inside).host_id(outside).size(1u32).build()
            };
            if let (Ok(uids), Ok(gids)) = (map(container.user.uid, uid), map(container.user.gid, gid)) {
                linux.set_uid_mappings(Some(vec![uids]));
                linux.set_gid_mappings(Some(vec![gids]));
            }
        }
        config
    } else {
        Spec::default()
    };
    config.set_hostname(Some("falak".into()));
    if let Some(root) = config.root_mut() {
        root.set_path("rootfs".into());
        root.set_readonly(Some(false));
    }
    let network = process.network;
    if let Some(runs) = config.process_mut() {
        runs.set_args(Some(process.args.clone()));
        let mut env: Vec<String> = process.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !process.env.contains_key("PATH") {
            env.push(format!("PATH={}", crate::DEFAULT_PATH));
        }
        runs.set_env(Some(env));
        runs.set_cwd(container.cwd.clone().into());
        if let Ok(user) = UserBuilder::default().uid(container.user.uid).gid(container.user.gid).build() {
            runs.set_user(user);
        }
        let limit = |typ, value: u64| PosixRlimitBuilder::default().typ(typ).hard(value).soft(value).build().ok();
        let rlimits = [limit(PosixRlimitType::RlimitNofile, process.open_files), limit(PosixRlimitType::RlimitCore, 0)];
        runs.set_rlimits(Some(rlimits.into_iter().flatten().collect()));
        runs.set_no_new_privileges(Some(true));
    }
    if let Some(linux) = config.linux_mut() {
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces.retain(|ns| ns.typ() != LinuxNamespaceType::Network);
            if network == Network::None {
                let mut network = oci_spec::runtime::LinuxNamespace::default();
                network.set_typ(LinuxNamespaceType::Network);
                namespaces.push(network);
            }
        }
        // Limits are the attempt cgroup's, which holds the container: the runtime sets none.
        linux.set_resources(None);
        linux.set_cgroups_path(cgroups_path.map(PathBuf::from));
    }
    let bind = |source: &Path, destination: &str, access: &str| {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".into(), access.into(), "nosuid".into(), "nodev".into()])
            .build()
            .ok()
    };
    let read_only = |source: &Path, destination: &str| bind(source, destination, "ro");
    let mounts = config.mounts_mut().get_or_insert_with(Vec::new);
    mounts.extend(container.mounts.iter().filter_map(|m| read_only(&m.source, &m.destination)));
    if let Some(dir) = &process.writable {
        mounts.extend(bind(&dir.source, &dir.destination, "rw"));
    }
    if network == Network::Host {
        // Name resolution as the node has it.
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(file).exists()
                && let Some(mount) = read_only(Path::new(file), file)
            {
                mounts.push(mount);
            }
        }
    }
    config
}

/// The attempt's cgroup, and the runtime's state of the container once it has ended: a runtime
/// killed before it cleaned up leaves its state directory behind.
#[derive(Debug)]
pub(crate) struct ContainerGroup {
    pub inner: Arc<dyn SandboxGroup>,
    pub program: PathBuf,
    pub state_dir: PathBuf,
    pub id: String,
}

impl SandboxGroup for ContainerGroup {
    fn kill(&self) {
        self.inner.kill();
    }

    fn memory_kill(&self) -> Option<u64> {
        self.inner.memory_kill()
    }

    fn usage(&self) -> Option<(u32, Option<u64>)> {
        self.inner.usage()
    }

    fn teardown(&self) {
        self.inner.teardown();
        // The container's processes are gone with the cgroup; `run --keep` left its state.
        let deleted = delete_command(&self.program, &self.state_dir, &self.id).status();
        if let Err(error) = deleted {
            tracing::warn!(%error, container = %self.id, "cannot run the runtime's delete");
        }
        let _ = fs::remove_dir_all(self.state_dir.join(&self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> (TaskSpec, ContainerTask) {
        let mut spec = TaskSpec::new("j7-t2", 3, vec!["sh".into(), "-c".into(), "echo hi".into()], "/tmp/x");
        spec.env.insert("GREETING".into(), "hello".into());
        let container = ContainerTask {
            rootfs: "/images/abc".into(),
            cwd: "/app".into(),
            user: RunAs { uid: 5, gid: 6 },
            mounts: vec![ReadOnlyMount { source: "/bundles/x".into(), destination: "/data".into() }],
        };
        (spec, container)
    }

    #[test]
    fn the_config_runs_the_command_as_the_container_user_without_network() {
        let (spec, container) = spec();
        let config = config(&ContainerProcess::of_task(&spec), &container, false, None);
        let process = config.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &spec.command);
        assert_eq!(process.cwd(), Path::new("/app"));
        assert_eq!((process.user().uid(), process.user().gid()), (5, 6));
        let env = process.env().as_ref().unwrap();
        for wanted in ["GREETING=hello", "FALAK_TASK_ID=j7-t2", "FALAK_ATTEMPT=3"] {
            assert!(env.iter().any(|e| e == wanted), "{env:?}");
        }
        assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        let linux = config.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        assert!(namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(linux.resources().is_none(), "limits belong to the attempt's cgroup");
        assert_eq!(process.no_new_privileges(), Some(true));
        let data = config.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        assert_eq!(data.source().as_deref(), Some(Path::new("/bundles/x")));
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_owned()), "{data:?}");
    }

    #[test]
    fn host_network_shares_the_node_s_and_rootless_maps_the_container_user_to_the_node() {
        let (mut spec, container) = spec();
        spec.network = Network::Host;
        let config = config(&ContainerProcess::of_task(&spec), &container, true, None);
        let linux = config.linux().as_ref().unwrap();
        let namespaces = linux.namespaces().as_ref().unwrap();
        assert!(!namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        assert!(namespaces.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        let uids = linux.uid_mappings().as_ref().unwrap();
        assert_eq!(uids.len(), 1);
        assert_eq!(uids[0].container_id(), 5);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(uids[0].host_id(), unsafe { libc::geteuid() });
    }

    #[test]
    fn a_function_instance_s_socket_dir_is_bound_writable() {
        let (spec, container) = spec();
        let mut process = ContainerProcess::of_task(&spec);
        process.writable = Some(ReadOnlyMount { source: "/w/run/c7".into(), destination: "/run/falak".into() });
        let config = config(&process, &container, false, None);
        let mounts = config.mounts().as_ref().unwrap();
        let socket = mounts.iter().find(|m| m.destination() == Path::new("/run/falak")).unwrap();
        assert_eq!(socket.source().as_deref(), Some(Path::new("/w/run/c7")));
        let options = socket.options().as_ref().unwrap();
        assert!(options.contains(&"rw".to_owned()) && !options.contains(&"ro".to_owned()), "{options:?}");
    }

    #[test]
    fn a_runtime_in_a_system_directory_is_found_without_it_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("my-runtime");
        std::fs::write(&runtime, "").unwrap();
        let path = std::ffi::OsString::from(dir.path());
        assert_eq!(find_program("my-runtime", Some(&path)), Some(runtime.clone()));
        assert_eq!(find_program(runtime.to_str().unwrap(), None), Some(runtime));
        // `sh` is in a system directory on every host these tests run on.
        assert!(find_program("sh", Some(std::ffi::OsStr::new("/nonexistent"))).is_some());
        assert_eq!(find_program("no-such-runtime-anywhere", None), None);
    }

    #[test]
    fn container_ids_keep_to_safe_characters() {
        let (mut spec, _) = spec();
        assert_eq!(container_id(&spec), "j7-t2.a3");
        spec.task_id = "a/b c".into();
        assert_eq!(container_id(&spec), "a_b_c.a3");
    }
}
