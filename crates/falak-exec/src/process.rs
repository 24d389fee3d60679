//! `ProcessExecutor`: a task attempt as a host process group, sandboxed by default.
//!
//! Each attempt runs in its own session and process group, in a private working directory,
//! as an unprivileged user when the node is root, with no_new_privs, rlimits, a cleared
//! environment and only stdin, stdout and stderr open. Output goes to files in the working
//! directory. Timeout, stop, and the end of the main process kill the whole group, so a task
//! leaves nothing running behind it. `docs/design/executor.md` lists the defaults and what is
//! left for later.

mod child;
mod monitor;
mod procfs;

use std::fs::{self, File, Permissions};
use std::io::{self, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::executor::{Executor, PrepareError, Running, StartError};
use crate::log::{LogChunk, ReadLogError, Stream, read_log};
use crate::sandbox::{NoSandbox, Sandbox};
use crate::task::{RunAs, TaskSpec};
use child::ChildSetup;

/// `PATH` for tasks that do not set their own: the usual system directories, no working
/// directory and nothing user-writable.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process executor's node-wide settings.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The user for specs without `run_as`. [`ProcessConfig::default`] sets nobody when the
    /// node runs as root and `None` (the node's own user) otherwise.
    pub default_run_as: Option<RunAs>,
    /// `PATH` in the task's environment unless its spec sets one.
    pub path: String,
    /// After a timeout, how long the task has between SIGTERM and SIGKILL.
    pub timeout_grace: Duration,
    pub sandbox: Arc<dyn Sandbox>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            default_run_as: RunAs::default_for_node(),
            path: DEFAULT_PATH.to_owned(),
            timeout_grace: Duration::from_secs(5),
            sandbox: Arc::new(NoSandbox),
        }
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

    /// The user to become, if any, after checking the node can become it.
    fn switch_to(&self, spec: &TaskSpec) -> Result<Option<RunAs>, PrepareError> {
        let Some(user) = spec.run_as.or(self.config.default_run_as) else { return Ok(None) };
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if euid == 0 {
            Ok(Some(user))
        } else if user == (RunAs { uid: euid, gid: egid }) {
            Ok(None)
        } else {
            Err(PrepareError::RunAs { task_id: spec.task_id.clone(), uid: user.uid, node_uid: euid })
        }
    }

    async fn prepare_workdir(&self, spec: &TaskSpec) -> Result<Option<RunAs>, PrepareError> {
        spec.validate()?;
        let switch_to = self.switch_to(spec)?;
        let path = spec.workdir.clone();
        let made = tokio::task::spawn_blocking(move || make_workdir(&path, switch_to)).await;
        let made = made.unwrap_or_else(|e| Err(io::Error::other(e)));
        made.map_err(|source| PrepareError::Workdir {
            task_id: spec.task_id.clone(),
            path: spec.workdir.clone(),
            source,
        })?;
        Ok(switch_to)
    }

    async fn start_process(&self, spec: TaskSpec) -> Result<Arc<monitor::ProcessRunning>, StartError> {
        let switch_to = self.prepare_workdir(&spec).await?;
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

        // From here on a failure must tear the sandbox down again.
        let sandbox = self.config.sandbox.clone();
        let setup = sandbox.setup(&spec).map_err(|source| {
            sandbox.teardown(&spec);
            StartError::Sandbox { task_id: spec.task_id.clone(), source }
        })?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let node_is_root = unsafe { libc::geteuid() } == 0;
        let child_setup =
            ChildSetup::new(&spec.limits, switch_to, setup.join.as_ref().map(AsRawFd::as_raw_fd), node_is_root);

        let path = spec.env.get("PATH").cloned().unwrap_or_else(|| self.config.path.clone());
        let mut command = tokio::process::Command::new(spec.program());
        command
            .args(&spec.command[1..])
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &spec.workdir)
            .env("FALAK_TASK_ID", &spec.task_id)
            .env("FALAK_ATTEMPT", spec.attempt.to_string())
            .envs(&spec.env)
            .current_dir(&spec.workdir)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false);
        // SAFETY: `apply` makes only async-signal-safe system calls and allocates nothing
        // (see `child.rs`), which is what may run between fork and exec.
        unsafe { command.pre_exec(move || child_setup.apply()) };

        // Nothing below awaits, so a caller that drops the `start` future either gets no
        // process or a monitored one: never an orphan.
        let started = crate::clock::monotonic_now();
        let spawned = command.spawn();
        // The child holds its own copies now; close the node's copies of its stdio and the
        // sandbox's join file.
        drop(command);
        drop(setup);
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                sandbox.teardown(&spec);
                return Err(spawn_error(&spec, &path, switch_to, source));
            }
        };
        let running = monitor::ProcessRunning::spawn(monitor::Monitored {
            child,
            spec,
            started,
            logs: [files.stdout, files.stderr],
            timeout_grace: self.config.timeout_grace,
            sandbox,
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
    Ok(())
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
