//! What the node asks an executor to run: one task attempt, its limits and its user.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use falak_core::job::LEDGER_TAIL_BYTES;
use falak_sandbox::{Network, RunAs};

/// [`Limits::max_pids`] unless the spec sets it.
pub const DEFAULT_MAX_PIDS: u64 = 1024;

/// The largest `output_tail_bytes` a spec may ask for: tails live in memory and in the ledger.
pub const MAX_OUTPUT_TAIL_BYTES: usize = 1 << 20;

/// One task attempt, as the node hands it to an executor.
///
/// The executor owns nothing outside `workdir`: it creates that directory, writes the task's
/// stdin and logs there and runs the task in it. One attempt, one directory, so a retry never
/// sees (or clobbers) the files of the attempt before it.
///
/// `Debug` shows `env`'s names only: the node opens the capsule's secrets into it.
#[derive(Clone, PartialEq, Eq, derive_more::Debug)]
pub struct TaskSpec {
    /// The task the attempt belongs to, e.g. `j12-t3`; used in logs, errors and `FALAK_TASK_ID`.
    pub task_id: String,
    /// The attempt number, from 1; exported as `FALAK_ATTEMPT`.
    pub attempt: u32,
    /// Program and arguments. The program is looked up in the task's `PATH` unless it contains
    /// a `/`; a relative path is relative to `workdir`.
    pub command: Vec<String>,
    /// The task's whole environment on top of the executor's defaults (which it may override).
    #[debug("{:?}", env.keys().collect::<Vec<_>>())]
    pub env: BTreeMap<String, String>,
    /// Bytes for the task's stdin; `None` gives it `/dev/null`.
    #[debug("{:?}", stdin.as_ref().map(Vec::len))]
    pub stdin: Option<Vec<u8>>,
    /// An absolute path, unique to this attempt, that the executor creates (mode 0700, owned by
    /// the task's user). Its parents are created if missing and need not be readable by the
    /// task's user; the task enters its directory before it drops privileges.
    pub workdir: PathBuf,
    /// Kill the task (whole process group) once it has run this long.
    pub timeout: Option<Duration>,
    pub limits: Limits,
    /// The user to run as; `None` means the executor's default (see `ProcessConfig`).
    pub run_as: Option<RunAs>,
    /// The network the task sees. [`Network::None`] (the default) is a namespace of its own
    /// with only a loopback interface: the task reaches nothing outside, in particular not the
    /// node's own API, RPC and gossip ports, even on `127.0.0.1`. [`Network::Host`] shares the
    /// node's network. A node that cannot create network namespaces refuses to start a task
    /// with `None` rather than run it on the host's network.
    pub network: Network,
    /// How many bytes of the end of stdout and of stderr `Exit` carries.
    pub output_tail_bytes: usize,
    /// A directory whose contents are copied into `workdir` before the task starts, owned by
    /// the task's user (the capsule's unpacked code bundle; [`crate::code`]). They count
    /// against `limits.disk_bytes` like anything else in the working directory.
    pub code: Option<PathBuf>,
    /// Run as a container of this image ([`crate::ContainerTask`]): `command` is the
    /// container's process and `env` its whole environment; `run_as` does not apply (the
    /// container's user is the [`ContainerTask`]'s) and neither does `code`.
    pub container: Option<crate::ContainerTask>,
}

impl TaskSpec {
    /// A spec with an empty environment, no stdin, no timeout, default limits, the executor's
    /// default user, no network and tails as large as the ledger keeps.
    pub fn new(task_id: impl Into<String>, attempt: u32, command: Vec<String>, workdir: impl Into<PathBuf>) -> Self {
        TaskSpec {
            task_id: task_id.into(),
            attempt,
            command,
            env: BTreeMap::new(),
            stdin: None,
            workdir: workdir.into(),
            timeout: None,
            limits: Limits::default(),
            run_as: None,
            network: Network::None,
            output_tail_bytes: LEDGER_TAIL_BYTES,
            code: None,
            container: None,
        }
    }

    /// The program: the first word of the command.
    pub fn program(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// Check what every executor needs before it touches the host: a program to run, an
    /// absolute working directory, strings the kernel accepts.
    pub fn validate(&self) -> Result<(), InvalidSpecError> {
        let invalid = |reason: String| Err(InvalidSpecError { task_id: self.task_id.clone(), reason });
        if self.program().is_empty() {
            return invalid("the command is empty; the capsule must name a program to run".into());
        }
        if !self.workdir.is_absolute() {
            return invalid(format!("the working directory {} is not an absolute path", self.workdir.display()));
        }
        if let Some(arg) = self.command.iter().find(|a| a.contains('\0')) {
            return invalid(format!("the command argument {arg:?} contains a NUL byte"));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return invalid(format!("the environment variable name {key:?} is empty or contains `=` or NUL"));
            }
            if value.contains('\0') {
                return invalid(format!("the value of environment variable {key} contains a NUL byte"));
            }
        }
        if self.output_tail_bytes > MAX_OUTPUT_TAIL_BYTES {
            return invalid(format!(
                "output_tail_bytes is {}, more than the {MAX_OUTPUT_TAIL_BYTES} allowed",
                self.output_tail_bytes
            ));
        }
        Ok(())
    }
}

/// A spec no executor can run; nothing was created or started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec for task {task_id}: {reason}")]
pub struct InvalidSpecError {
    pub task_id: String,
    pub reason: String,
}

/// Resource limits for one attempt. `None` means "not limited by this executor".
///
/// The process executor enforces the rlimit-backed fields itself. `cpu_millis`,
/// `memory_bytes` and `max_pids` go to the [`Sandbox`](crate::Sandbox), which turns them into
/// the attempt's cgroup limits; they are **not** turned into rlimits: there is no rlimit for a
/// CPU share, and `RLIMIT_AS` caps address space, not memory, which breaks runtimes that
/// reserve large virtual ranges (Go, the JVM, V8, wasm engines). Without a cgroup sandbox they
/// are not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU in millicores (1000 = one core): the cgroup's CPU share when CPUs are contended
    /// (`cpu.weight`, or v1 `cpu.shares`), not a cap: an idle CPU is not withheld.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes: the cgroup's memory limit, swap included (`memory.max` and
    /// `memory.swap.max = 0`, or v1 `memory.limit_in_bytes`/`memory.memsw.limit_in_bytes`).
    /// Going over it gets the task killed, and the exit says so
    /// ([`ExitReason::MemoryLimit`](crate::ExitReason::MemoryLimit)).
    pub memory_bytes: Option<u64>,
    /// The cgroup's `pids.max`: processes *and threads* of this task together. Default 1024,
    /// enough for thread-pooled runtimes, low enough that a fork bomb stops at it.
    pub max_pids: Option<u64>,
    /// `RLIMIT_NOFILE`: open file descriptors per process. Default 1024.
    pub max_open_files: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the task's *user* (all tasks sharing that user count
    /// together, and root is exempt), so it is a fork-bomb brake rather than a per-task quota.
    pub max_processes: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file the task may write, its logs included; a task that
    /// goes past it gets `SIGXFSZ`. Bounds the disk one task can fill with output.
    pub max_file_bytes: Option<u64>,
    /// `RLIMIT_AS`: opt-in address-space cap, for callers who know their runtime tolerates it.
    pub address_space_bytes: Option<u64>,
    /// The most disk the working directory may use, logs included (blocks allocated). The
    /// process executor measures it every [`DiskConfig::check_every`](crate::disk::DiskConfig)
    /// and stops the task when it is over
    /// ([`ExitReason::DiskLimit`](crate::ExitReason::DiskLimit)); it also caps
    /// `RLIMIT_FSIZE` ([`Limits::file_size_limit`]) so that no single file outgrows it between
    /// two measurements.
    pub disk_bytes: Option<u64>,
}

impl Limits {
    /// `RLIMIT_FSIZE`: the smaller of [`Limits::max_file_bytes`] and [`Limits::disk_bytes`].
    pub fn file_size_limit(&self) -> Option<u64> {
        match (self.max_file_bytes, self.disk_bytes) {
            (Some(file), Some(disk)) => Some(file.min(disk)),
            (file, disk) => file.or(disk),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_millis: None,
            memory_bytes: None,
            max_pids: Some(DEFAULT_MAX_PIDS),
            max_open_files: Some(1024),
            max_processes: None,
            max_file_bytes: None,
            address_space_bytes: None,
            disk_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> TaskSpec {
        TaskSpec::new("j1-t0", 1, command.iter().map(|s| s.to_string()).collect(), "/tmp/falak-test")
    }

    #[test]
    fn validate_accepts_a_plain_spec() {
        assert_eq!(spec(&["echo", "hi"]).validate(), Ok(()));
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let empty = spec(&[]).validate().unwrap_err();
        assert!(empty.to_string().contains("command is empty"), "{empty}");

        let mut relative = spec(&["true"]);
        relative.workdir = "work".into();
        assert!(relative.validate().unwrap_err().to_string().contains("not an absolute path"));

        let mut env = spec(&["true"]);
        env.env.insert("A=B".into(), "x".into());
        assert!(env.validate().unwrap_err().to_string().contains("\"A=B\""));

        let nul = spec(&["echo", "a\0b"]).validate().unwrap_err();
        assert!(nul.to_string().contains("NUL"));
    }

    #[test]
    fn debug_shows_the_environments_names_not_its_values() {
        let mut with_secret = spec(&["true"]);
        with_secret.env.insert("TOKEN".into(), "hunter2".into());
        let printed = format!("{with_secret:?}");
        assert!(printed.contains("TOKEN") && !printed.contains("hunter2"), "{printed}");
    }
}
