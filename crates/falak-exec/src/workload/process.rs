//! Processes of workloads: launching one confined (its own session and process group,
//! dying with the node, and whatever else its [`Confinement`] says), and watching any process
//! (ours or a zygote's child) through a pidfd.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits. `launch` forks on
//! the calling thread, so call it from a tokio worker (any `async fn` of this crate), never from
//! a `spawn_blocking` thread, which tokio retires after it idles.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use falak_sandbox::Confinement;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// How long `stop` waits for a process to go after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to run.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub cwd: &'a Path,
    pub env: BTreeMap<String, OsString>,
    pub log_path: &'a Path,
    /// Give the child a pipe to report readiness on (its number is in `FALAK_READY_FD`).
    pub ready_pipe: bool,
    /// Pipe stdin, stdout and stderr instead of null and the log.
    pub piped: bool,
    /// What the child does to itself before `exec` (see [`crate::workload::sandbox`]). `launch` adds
    /// the parent-death signal and lets the readiness pipe through.
    pub confinement: Confinement,
}

/// A launched process and, when asked for, the read end of its readiness pipe.
pub struct Launched {
    pub process: Process,
    pub ready: Option<tokio::net::unix::pipe::Receiver>,
    /// Set when `Launch::piped`.
    pub stdio: Option<(tokio::process::ChildStdin, tokio::process::ChildStdout, tokio::process::ChildStderr)>,
}

/// Start a confined process in a session (and process group) of its own, with
/// `PR_SET_PDEATHSIG(SIGKILL)`, stdin null and stdout and stderr appended to the log (unless
/// piped). The environment is exactly `env`.
///
/// A new session rather than only a process group: without a controlling terminal, the
/// process cannot push input into the terminal the node was started from (`TIOCSTI`).
pub fn launch(launch: Launch<'_>) -> io::Result<Launched> {
    let mut command = tokio::process::Command::new(launch.program);
    command.args(&launch.args).current_dir(launch.cwd).env_clear().envs(&launch.env).kill_on_drop(false);
    if launch.piped {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        if let Some(parent) = launch.log_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = OpenOptions::new().create(true).append(true).open(launch.log_path)?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    }
    let mut confinement = launch.confinement.parent_death_signal(libc::SIGKILL, std::process::id() as libc::pid_t);
    let (ready_read, ready_write) = if launch.ready_pipe {
        let (read, write) = pipe()?;
        command.env("FALAK_READY_FD", write.as_raw_fd().to_string());
        confinement = confinement.keep_fd(write.as_raw_fd());
        (Some(read), Some(write))
    } else {
        (None, None)
    };
    // SAFETY: `Confinement::apply` makes only async-signal-safe system calls and allocates
    // nothing (see `falak_sandbox::confinement`), as the code between fork and exec must.
    unsafe { command.pre_exec(move || confinement.apply()) };
    let spawned = command.spawn();
    // The child has its copies; ours must go: the pipe's (so that EOF on it means the child is
    // gone), the cgroup join files' and the Landlock ruleset's (owned by the hook).
    drop(command);
    drop(ready_write);
    let mut child = spawned?;
    let stdio = match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Some((stdin, stdout, stderr)),
        _ => None,
    };
    let process = Process::own(child)?;
    let ready = ready_read.map(tokio::net::unix::pipe::Receiver::from_owned_fd).transpose()?;
    Ok(Launched { process, ready, stdio })
}

/// A pipe whose both ends are close-on-exec (the child's end is made inheritable after fork).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    // SAFETY: pipe2 writes two descriptors into a valid two-element array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A running (or exited) process that leads its own process group. Dropping it kills the
/// group if the process is still alive.
pub struct Process {
    pid: u32,
    pidfd: Arc<AsyncFd<OwnedFd>>,
    exited: watch::Receiver<Option<ProcessExit>>,
}

/// How a process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessExit {
    /// ProcessExit code 0 (false when unknown: a zygote's children are reaped by the zygote).
    pub success: bool,
    /// E.g. `exit status: 1`, `signal: 9 (SIGKILL)`, or `exited`.
    pub description: String,
}

impl Process {
    /// Our own child: a task reaps it and records its exit status.
    fn own(mut child: tokio::process::Child) -> io::Result<Process> {
        let pid = child.id().ok_or_else(|| io::Error::other("the child exited and was reaped already"))?;
        // The child is not reaped before `wait` below, so its pid cannot have been reused.
        let pidfd = watch_pidfd(pid)?;
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => ProcessExit { success: status.success(), description: status.to_string() },
                Err(e) => ProcessExit { success: false, description: format!("waiting for it failed: {e}") },
            };
            let _ = tx.send(Some(exit));
        });
        Ok(Process { pid, pidfd, exited })
    }

    /// A process that is not our child, from a pidfd its parent sent (a zygote's instance: in
    /// the zygote's pid namespace the zygote's number for it means nothing here, and a pidfd
    /// cannot name another process once this one is gone). Its pid is this node's number for
    /// it. Fails with `ESRCH` if it has already been reaped, `InvalidData` if `pidfd` is no
    /// pidfd.
    pub fn from_pidfd(pidfd: OwnedFd) -> io::Result<Process> {
        let pid = pidfd_pid(&pidfd)?;
        let pidfd = watch(pidfd)?;
        let (tx, exited) = watch::channel(None);
        let watched = pidfd.clone();
        tokio::spawn(async move {
            let _ = watched.readable().await;
            let _ = tx.send(Some(ProcessExit { success: false, description: "exited".to_owned() }));
        });
        Ok(Process { pid, pidfd, exited })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process group, equal to the pid: every process here leads its own group.
    pub fn process_group(&self) -> i32 {
        self.pid as i32
    }

    /// False once the process has exited (even if not yet reaped).
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes one pollfd we own; timeout 0 never blocks.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// Resolves once the process has exited, with how it exited if known.
    pub async fn exited(&self) -> ProcessExit {
        let mut exited = self.exited.clone();
        let seen = exited.wait_for(Option::is_some).await.ok().and_then(|exit| exit.clone());
        match seen {
            Some(exit) => exit,
            // The watcher task is gone (runtime shutting down); fall back to the pidfd.
            None => {
                let _ = self.pidfd.readable().await;
                ProcessExit { success: false, description: "exited".to_owned() }
            }
        }
    }

    /// Send `signal` to the process group, and to the process itself through its pidfd (it may
    /// not lead its group yet if it was forked a moment ago).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill and pidfd_send_signal take plain integers; the worst they do is fail.
        // The pidfd cannot reach a reused pid; the group id cannot be reused while any member
        // of the group is alive.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), signal);
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            );
        }
    }

    /// SIGTERM the group, SIGKILL it after `grace`, and wait for the process to exit.
    pub async fn stop(&self, grace: Duration) {
        if self.is_alive() {
            self.signal(libc::SIGTERM);
            let _ = tokio::time::timeout(grace, self.exited()).await;
        }
        // Also whatever the process started and left behind in its group.
        self.signal(libc::SIGKILL);
        let _ = tokio::time::timeout(KILL_WAIT, self.exited()).await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

/// The pid, in this process's pid namespace, of the process `pidfd` refers to
/// (`/proc/self/fdinfo`: `Pid:`, -1 once it has been reaped, 0 where it has no number here).
fn pidfd_pid(pidfd: &OwnedFd) -> io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info.lines().find_map(|line| line.strip_prefix("Pid:")).map(|pid| pid.trim().parse::<i64>());
    match pid {
        Some(Ok(pid)) if pid > 0 => u32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidData)),
        Some(Ok(_)) => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not a pidfd")),
    }
}

/// A pidfd for `pid`, registered with the reactor: it turns readable when the process exits.
fn watch_pidfd(pid: u32) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    watch(pidfd_open(pid)?)
}

/// `pidfd`, registered with the reactor.
fn watch(pidfd: OwnedFd) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    // SAFETY: the `OwnedFd` keeps the descriptor open, and always returns the same one, for as
    // long as the `AsyncFd` owns it.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }?;
    Ok(Arc::new(registered))
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned by the kernel and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Append `text` to the log (best effort: a log we cannot write must not fail a request).
pub fn append_log(log_path: &Path, text: &[u8]) {
    use std::io::Write;
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log_path) {
        let _ = file.write_all(text);
    }
}

/// The environment variables of the node that instances inherit; everything else is dropped,
/// so the node's own secrets never reach user code.
pub const INHERITED_ENV: &[&str] =
    &["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR"];

/// A path as an `OsString` argument.
pub fn arg(path: &Path) -> OsString {
    path.as_os_str().to_owned()
}
