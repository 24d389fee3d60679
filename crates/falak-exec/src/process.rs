//! `ProcessExecutor`: a task attempt as a host process group, sandboxed by default.
//!
//! Each attempt runs in its own session and process group and (with [`CgroupSandbox`]) its
//! own cgroup, in a private working directory, as an unprivileged user when the node is root,
//! with no_new_privs, rlimits, the workload seccomp filter, Landlock where the kernel has it,
//! its own network namespace unless the spec asks for the host's, a cleared environment and
//! only stdin, stdout and stderr open. The child's side is a `falak_sandbox::Confinement`.
//! Output goes to files in the working directory. Timeout, stop, and the end of the main
//! process kill the whole group and cgroup, so a task leaves nothing running behind it.
//! `docs/design/executor.md` lists the defaults and what happens where the host lacks one.

mod disk_watch;
mod monitor;
mod procfs;

use std::fs::{self, File, Permissions};
use std::io::{self, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use falak_sandbox::{HostSandbox, LandlockRuleset, Namespaces, Network, Rlimit, RunAs, SandboxReport, View};
use futures_util::future::BoxFuture;

use crate::disk::DiskConfig;
use crate::executor::{Executor, PrepareError, Running, StartError};
use crate::log::{LogChunk, ReadLogError, Stream, read_log};
use crate::sandbox::{CgroupSandbox, NoSandbox, Sandbox, SandboxError};
use crate::task::{Limits, TaskSpec};
use crate::workload::WorkloadSandbox;

/// `PATH` for tasks that do not set their own: the usual system directories, no working
/// directory and nothing user-writable.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The name of the directory, inside each attempt's working directory, that is its `TMPDIR`:
/// with Landlock the task may write nowhere else, `/tmp` included.
pub const TMP_DIR: &str = "tmp";

/// The process executor's node-wide settings.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The user for specs without `run_as`: nobody when the node runs as root and `None`
    /// (the node's own user) otherwise. A `run_as` is the user itself when the node is root,
    /// and the user the task sees inside its user namespace when it is not.
    pub default_run_as: Option<RunAs>,
    /// `PATH` in the task's environment unless its spec sets one.
    pub path: String,
    /// After a timeout, how long the task has between SIGTERM and SIGKILL.
    pub timeout_grace: Duration,
    /// Per-attempt isolation: [`CgroupSandbox`] where the host allows, else [`NoSandbox`].
    pub sandbox: Arc<dyn Sandbox>,
    /// What the host allows, as for every process the node starts (`crate::workload`): the
    /// seccomp filter, Landlock, the namespaces (with none, a task with [`Network::None`] fails
    /// to start instead of running on the host's network) and the directories no task may see
    /// (`hide`: the node's data dir, keys, the node user's home; each task's mount namespace
    /// covers them, except its own working directory). Its `run_as` is unused: tasks take
    /// [`ProcessConfig::default_run_as`] or their spec's.
    pub workload: WorkloadSandbox,
    /// How attempts' working directories are measured against their disk limits, and the
    /// node's disk reserve (`crate::disk`).
    pub disk: DiskConfig,
    /// The OCI runtime for specs with a container; `None` refuses them.
    pub containers: Option<crate::ContainerRuntime>,
}

impl ProcessConfig {
    /// The node's configuration: every confinement this host allows, with one cgroup per
    /// attempt under `falak/<cgroup_scope>` (a name unique to the node on this host, such as
    /// its id). Returns what is enforced, for the node to log and expose; each missing piece
    /// was logged as a warning. Blocking (it probes the host and makes the node's cgroup).
    pub fn sandboxed(cgroup_scope: &str) -> (ProcessConfig, SandboxReport) {
        let host = HostSandbox::detect(Some(cgroup_scope));
        (ProcessConfig::from_host(&host), host.report)
    }

    /// Everything but cgroups: tasks get no memory, cpu or pids limit and a process that
    /// leaves the task's process group escapes stop. For tests and hosts that refuse cgroups;
    /// a node uses [`ProcessConfig::sandboxed`]. Blocking (it probes the host).
    pub fn without_cgroups() -> ProcessConfig {
        ProcessConfig::from_host(&HostSandbox::detect(None))
    }

    /// The configuration for what `host` allows.
    pub fn from_host(host: &HostSandbox) -> ProcessConfig {
        let sandbox: Arc<dyn Sandbox> = match &host.cgroups {
            Some(cgroups) => Arc::new(CgroupSandbox::new(cgroups.clone())),
            None => Arc::new(NoSandbox),
        };
        ProcessConfig {
            default_run_as: RunAs::default_for_node(),
            path: DEFAULT_PATH.to_owned(),
            timeout_grace: Duration::from_secs(5),
            sandbox,
            workload: WorkloadSandbox::from_host(host),
            disk: DiskConfig::default(),
            containers: None,
        }
    }
}

/// [`ProcessConfig::without_cgroups`]: kept so callers that predate cgroups still build;
/// a node should use [`ProcessConfig::sandboxed`].
impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig::without_cgroups()
    }
}

/// Runs task attempts as host processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessExecutor {
    config: ProcessConfig,
}

impl ProcessExecutor {
    pub fn new(config: ProcessConfig) -> Self {
        ProcessExecutor { config }
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    /// Who the task is, after checking the node can make it so.
    fn identity(&self, spec: &TaskSpec) -> Result<Identity, PrepareError> {
        let Some(user) = spec.run_as.or(self.config.default_run_as) else { return Ok(Identity::default()) };
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if self.config.workload.namespaces == Namespaces::User {
            Ok(Identity { switch_to: None, inner: Some(user) })
        } else if euid == 0 {
            Ok(Identity { switch_to: Some(user), inner: None })
        } else if user == (RunAs { uid: euid, gid: egid }) {
            Ok(Identity::default())
        } else {
            Err(PrepareError::RunAs { task_id: spec.task_id.clone(), uid: user.uid, node_uid: euid })
        }
    }

    async fn prepare_workdir(&self, spec: &TaskSpec) -> Result<Identity, PrepareError> {
        spec.validate()?;
        let identity = self.identity(spec)?;
        let (path, owner) = (spec.workdir.clone(), identity.switch_to);
        let made = tokio::task::spawn_blocking(move || make_workdir(&path, owner)).await;
        let made = made.unwrap_or_else(|e| Err(io::Error::other(e)));
        made.map_err(|source| PrepareError::Workdir {
            task_id: spec.task_id.clone(),
            path: spec.workdir.clone(),
            source,
        })?;
        if let Some(code) = spec.code.clone() {
            let workdir = spec.workdir.clone();
            let copied = tokio::task::spawn_blocking(move || crate::code::copy_into(&code, &workdir, owner)).await;
            copied.unwrap_or_else(|e| Err(io::Error::other(e))).map_err(|source| PrepareError::Code {
                task_id: spec.task_id.clone(),
                path: spec.code.clone().unwrap_or_default(),
                source,
            })?;
        }
        Ok(identity)
    }

    async fn start_process(&self, spec: TaskSpec) -> Result<Arc<monitor::ProcessRunning>, StartError> {
        disk_watch::check_reserve(&spec, &self.config.disk).await?;
        let identity = self.prepare_workdir(&spec).await?;
        let switch_to = identity.switch_to;
        let files_error =
            |source| StartError::Files { task_id: spec.task_id.clone(), path: spec.workdir.clone(), source };
        let (workdir, stdin) = (spec.workdir.clone(), spec.stdin.clone());
        let files = tokio::task::spawn_blocking(move || TaskFiles::create(&workdir, stdin.as_deref())).await;
        let files = files.unwrap_or_else(|e| Err(io::Error::other(e))).map_err(files_error)?;
        let (stdin, stdout, stderr) = (
            files.stdin_for_child().map_err(files_error)?,
            files.stdout.try_clone().map_err(files_error)?,
            files.stderr.try_clone().map_err(files_error)?,
        );
        if let Some(container) = spec.container.clone() {
            return self.start_container(spec, container, files, [stdin, stdout.into(), stderr.into()]).await;
        }

        let workload = &self.config.workload;
        if spec.network == Network::None && workload.namespaces == Namespaces::Unavailable {
            return Err(StartError::Network { task_id: spec.task_id.clone() });
        }
        let isolation = workload
            .isolation()
            .network(spec.network)
            .inner_user(identity.inner)
            .view(View::hiding(workload.hide.clone()).writable(&spec.workdir))
            .chdir(&spec.workdir);
        let isolation = tokio::task::spawn_blocking(move || isolation.prepare()).await;
        let isolation =
            isolation.unwrap_or_else(|e| Err(io::Error::other(e))).map_err(|source| StartError::Sandbox {
                task_id: spec.task_id.clone(),
                source: SandboxError { what: "prepare the namespaces of", path: spec.workdir.clone(), source },
            })?;
        let landlock = if workload.landlock {
            let workdir = spec.workdir.clone();
            // With a mount namespace the node's files are hidden; without, reads are limited.
            let read_everything = workload.namespaces != Namespaces::Unavailable;
            let ruleset =
                tokio::task::spawn_blocking(move || LandlockRuleset::for_workload(&workdir, &[], read_everything))
                    .await;
            let ruleset = ruleset
                .unwrap_or_else(|e| Err(falak_sandbox::LandlockError { path: String::new(), message: e.to_string() }));
            ruleset.map_err(|e| StartError::Sandbox {
                task_id: spec.task_id.clone(),
                source: SandboxError {
                    what: "prepare Landlock for",
                    path: spec.workdir.clone(),
                    source: io::Error::other(e.message),
                },
            })?
        } else {
            None
        };

        // From here on a failure must tear the sandbox down again.
        let setup = self.setup_sandbox(&spec).await?;
        let group = setup.group;
        let confinement =
            workload.confinement(switch_to, &rlimits(&spec.limits), setup.join, Some(isolation), landlock);

        let path = spec.env.get("PATH").cloned().unwrap_or_else(|| self.config.path.clone());
        let mut command = tokio::process::Command::new(spec.program());
        command
            .args(&spec.command[1..])
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &spec.workdir)
            .env("TMPDIR", spec.workdir.join(TMP_DIR))
            .env("FALAK_TASK_ID", &spec.task_id)
            .env("FALAK_ATTEMPT", spec.attempt.to_string())
            .envs(&spec.env)
            .current_dir(&spec.workdir)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // SAFETY: `apply` makes only async-signal-safe system calls and allocates nothing
        // (see `falak_sandbox::confinement`), which is what may run between fork and exec.
        unsafe { command.pre_exec(move || confinement.apply()) };

        self.spawn_monitored(command, spec, files, group, &path, switch_to).await
    }

    /// Run `spec` as a container of `container`: write its bundle, then start the runtime as
    /// the attempt's process (see [`crate::container`]).
    async fn start_container(
        &self,
        spec: TaskSpec,
        container: crate::ContainerTask,
        files: TaskFiles,
        stdio: [Stdio; 3],
    ) -> Result<Arc<monitor::ProcessRunning>, StartError> {
        let Some(runtime) = self.config.containers.clone() else {
            return Err(StartError::Backend {
                task_id: spec.task_id.clone(),
                message: "this node cannot run containers (its log says why at start); \
                          install runc or crun, or run the capsule on another node"
                    .into(),
            });
        };
        let sandbox_error = |what, source| StartError::Sandbox {
            task_id: spec.task_id.clone(),
            source: SandboxError { what, path: spec.workdir.clone(), source },
        };
        let setup = self.setup_sandbox(&spec).await?;
        let id = crate::container::container_id(&spec);
        // On cgroup v2 the runtime puts the container in the attempt's cgroup itself; on v1 it
        // joins it and makes the container's inside it.
        let cgroups_path = setup.group.unified_path();
        let join = if cgroups_path.is_some() { Vec::new() } else { setup.join };
        let group: Arc<dyn crate::sandbox::SandboxGroup> = Arc::new(crate::container::ContainerGroup {
            inner: setup.group,
            program: runtime.program.clone(),
            state_dir: runtime.state_dir.clone(),
            id: id.clone(),
        });
        let bundle = {
            let (runtime, spec, container) = (runtime.clone(), spec.clone(), container.clone());
            tokio::task::spawn_blocking(move || {
                let process = crate::ContainerProcess::of_task(&spec);
                crate::container::write_bundle(&runtime, &spec.workdir, &process, &container, cgroups_path)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        let bundle = match bundle {
            Ok(bundle) => bundle,
            Err(source) => {
                let teardown = group.clone();
                let _ = tokio::task::spawn_blocking(move || teardown.teardown()).await;
                return Err(sandbox_error("write the container bundle of", source));
            }
        };
        let mut confinement = falak_sandbox::Confinement::new().rlimits(&rlimits(&spec.limits)).join_cgroups(join);
        if let Some(overlay) = bundle.overlay {
            confinement = confinement.private_overlay(overlay);
        }
        let [stdin, stdout, stderr] = stdio;
        let mut command = tokio::process::Command::new(&runtime.program);
        command
            .args(crate::ContainerRuntime::run_args(&runtime.state_dir, &bundle.dir, &id))
            .env_clear()
            .env("PATH", &self.config.path)
            .current_dir(&spec.workdir)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // SAFETY: as for processes: `apply` is async-signal-safe.
        unsafe { command.pre_exec(move || confinement.apply()) };
        let path = self.config.path.clone();
        self.spawn_monitored(command, spec, files, group, &path, None).await
    }

    /// The attempt's sandbox (its cgroup, through [`ProcessConfig::sandbox`]). Blocking work, done
    /// off the runtime's threads.
    async fn setup_sandbox(&self, spec: &TaskSpec) -> Result<crate::sandbox::SandboxSetup, StartError> {
        let setup = {
            let (sandbox, spec) = (self.config.sandbox.clone(), spec.clone());
            tokio::task::spawn_blocking(move || sandbox.setup(&spec)).await
        };
        setup
            .unwrap_or_else(|e| {
                Err(SandboxError { what: "set up", path: spec.workdir.clone(), source: io::Error::other(e) })
            })
            .map_err(|source| StartError::Sandbox { task_id: spec.task_id.clone(), source })
    }

    /// Spawn `command` as the attempt's process and hand it to its monitor; on failure, tear
    /// `group` down again.
    async fn spawn_monitored(
        &self,
        mut command: tokio::process::Command,
        spec: TaskSpec,
        files: TaskFiles,
        group: Arc<dyn crate::sandbox::SandboxGroup>,
        path: &str,
        switch_to: Option<RunAs>,
    ) -> Result<Arc<monitor::ProcessRunning>, StartError> {
        // Nothing below awaits until the spawn has an answer, so a caller that drops the
        // `start` future either gets no process or a monitored one: never an orphan.
        let started = crate::clock::monotonic_now();
        let spawned = command.spawn();
        // The child holds its own copies now; close the node's copies of its stdio, the
        // cgroup join files and the Landlock ruleset (all owned by the hook).
        drop(command);
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                let teardown = group.clone();
                let _ = tokio::task::spawn_blocking(move || teardown.teardown()).await;
                return Err(spawn_error(&spec, path, switch_to, source));
            }
        };
        let running = monitor::ProcessRunning::spawn(monitor::Monitored {
            child,
            disk: disk_watch::DiskWatch::new(&spec, &self.config.disk),
            spec,
            started,
            logs: [files.stdout, files.stderr],
            timeout_grace: self.config.timeout_grace,
            group,
        });
        Ok(running)
    }
}

impl Executor for ProcessExecutor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), PrepareError>> {
        Box::pin(async move { self.prepare_workdir(spec).await.map(|_| ()) })
    }

    fn start(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Arc<dyn Running>, StartError>> {
        Box::pin(async move { self.start_process(spec).await.map(|running| running as Arc<dyn Running>) })
    }

    fn read_log<'a>(
        &'a self,
        workdir: &'a Path,
        stream: Stream,
        offset: Option<u64>,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<LogChunk, ReadLogError>> {
        let workdir = workdir.to_owned();
        Box::pin(async move {
            let path = workdir.join(stream.file_name());
            let read = tokio::task::spawn_blocking(move || read_log(&workdir, stream, offset, max_bytes)).await;
            read.unwrap_or_else(|e| Err(ReadLogError::Io { path, source: io::Error::other(e) }))
        })
    }
}

/// Who a task is: the user the child switches to (the node is root), or the user it is inside
/// its user namespace (the node is not); neither means the node's own user.
#[derive(Debug, Clone, Copy, Default)]
struct Identity {
    switch_to: Option<RunAs>,
    inner: Option<RunAs>,
}

/// Create the attempt's directory, mode 0700, owned by the task's user. An existing directory
/// is reused (prepare, then start); anything else in its place is an error.
fn make_workdir(path: &Path, owner: Option<RunAs>) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if !fs::symlink_metadata(path)?.is_dir() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "it exists and is not a directory"));
            }
        }
        Err(e) => return Err(e),
    }
    fs::set_permissions(path, Permissions::from_mode(0o700))?;
    if let Some(user) = owner {
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    }
    // The task's TMPDIR. In a reused directory the task may have put anything at this name;
    // leave it as it is rather than follow it.
    let tmp = path.join(TMP_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&tmp) {
        Ok(()) => {
            if let Some(user) = owner {
                std::os::unix::fs::lchown(&tmp, Some(user.uid), Some(user.gid))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The rlimits for `limits`: core dumps always off (they could fill the disk and would hold
/// the task's memory in a file), the rest as the spec says.
fn rlimits(limits: &Limits) -> Vec<(Rlimit, u64)> {
    let wanted = [
        (Rlimit::Core, Some(0)),
        (Rlimit::OpenFiles, limits.max_open_files),
        (Rlimit::Processes, limits.max_processes),
        (Rlimit::FileSize, limits.file_size_limit()),
        (Rlimit::AddressSpace, limits.address_space_bytes),
    ];
    wanted.into_iter().filter_map(|(limit, value)| Some((limit, value?))).collect()
}

/// The node's handles on the attempt's stdin and log files.
struct TaskFiles {
    stdin: Option<File>,
    stdout: File,
    stderr: File,
}

impl TaskFiles {
    /// Create `stdin` (when given), `stdout.log` and `stderr.log` afresh in `workdir`. The
    /// directory belongs to the task's user, who may have left links there if it is reused,
    /// so old entries are unlinked and new ones created exclusively — never opened through a
    /// link into a file the task could not otherwise write.
    fn create(workdir: &Path, stdin: Option<&[u8]>) -> io::Result<TaskFiles> {
        let stdin = match stdin {
            Some(bytes) => {
                let mut file = create_private(&workdir.join("stdin"))?;
                file.write_all(bytes)?;
                file.rewind()?;
                Some(file)
            }
            None => None,
        };
        Ok(TaskFiles {
            stdin,
            stdout: create_private(&workdir.join(Stream::Stdout.file_name()))?,
            stderr: create_private(&workdir.join(Stream::Stderr.file_name()))?,
        })
    }

    fn stdin_for_child(&self) -> io::Result<Stdio> {
        Ok(match &self.stdin {
            Some(file) => file.try_clone()?.into(),
            None => Stdio::null(),
        })
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    File::options().read(true).write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Turn `spawn`'s error (from `fork`, the child's setup or `exec`) into words the task's
/// record can carry.
fn spawn_error(spec: &TaskSpec, path: &str, switch_to: Option<RunAs>, source: io::Error) -> StartError {
    let task_id = spec.task_id.clone();
    let program = spec.program().to_owned();
    match source.raw_os_error() {
        Some(libc::ENOENT) => StartError::CommandNotFound { task_id, program, path: path.to_owned() },
        Some(libc::EACCES) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = switch_to.map_or_else(|| unsafe { libc::geteuid() }, |user| user.uid);
            StartError::PermissionDenied { task_id, program, uid }
        }
        _ => StartError::Spawn { task_id, program, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_dumps_are_always_off_and_unset_limits_are_left_alone() {
        let limits = Limits { max_open_files: None, ..Limits::default() };
        assert_eq!(rlimits(&limits), vec![(Rlimit::Core, 0)]);
        let limits = Limits { max_file_bytes: Some(10), ..Limits::default() };
        assert_eq!(rlimits(&limits), vec![(Rlimit::Core, 0), (Rlimit::OpenFiles, 1024), (Rlimit::FileSize, 10)]);
        // The disk limit caps the largest file too.
        let limits = Limits { disk_bytes: Some(1 << 20), ..Limits::default() };
        assert_eq!(rlimits(&limits), vec![(Rlimit::Core, 0), (Rlimit::OpenFiles, 1024), (Rlimit::FileSize, 1 << 20)]);
    }
}
