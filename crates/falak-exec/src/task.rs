//! What the node asks an executor to run: one task attempt, its limits and its user.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use falak_core::job::LEDGER_TAIL_BYTES;

/// The largest `output_tail_bytes` a spec may ask for: tails live in memory and in the ledger.
pub const MAX_OUTPUT_TAIL_BYTES: usize = 1 << 20;

/// One task attempt, as the node hands it to an executor.
///
/// The executor owns nothing outside `workdir`: it creates that directory, writes the task's
/// stdin and logs there and runs the task in it. One attempt, one directory, so a retry never
/// sees (or clobbers) the files of the attempt before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The task the attempt belongs to, e.g. `j12-t3`; used in logs, errors and `FALAK_TASK_ID`.
    pub task_id: String,
    /// The attempt number, from 1; exported as `FALAK_ATTEMPT`.
    pub attempt: u32,
    /// Program and arguments. The program is looked up in the task's `PATH` unless it contains
    /// a `/`; a relative path is relative to `workdir`.
    pub command: Vec<String>,
    /// The task's whole environment on top of the executor's defaults (which it may override).
    pub env: BTreeMap<String, String>,
    /// Bytes for the task's stdin; `None` gives it `/dev/null`.
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
    /// How many bytes of the end of stdout and of stderr `Exit` carries.
    pub output_tail_bytes: usize,
}

impl TaskSpec {
    /// A spec with an empty environment, no stdin, no timeout, default limits, the executor's
    /// default user and tails as large as the ledger keeps.
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
            output_tail_bytes: LEDGER_TAIL_BYTES,
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
/// The process executor enforces the rlimit-backed fields itself. `cpu_millis` and
/// `memory_bytes` are what the task reserved in the ledger; they are handed to the
/// [`Sandbox`](crate::Sandbox) (cgroups, later) and are **not** turned into rlimits: there is
/// no rlimit for a CPU share, and `RLIMIT_AS` caps address space, not memory, which breaks
/// runtimes that reserve large virtual ranges (Go, the JVM, V8, wasm engines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU in millicores (1000 = one core), for the sandbox.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes, for the sandbox.
    pub memory_bytes: Option<u64>,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_millis: None,
            memory_bytes: None,
            max_open_files: Some(1024),
            max_processes: None,
            max_file_bytes: None,
            address_space_bytes: None,
        }
    }
}

/// The user and group a task runs as. Supplementary groups are always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The uid and gid of `nobody`/`nogroup` on Linux, used when the user database has no `nobody`.
pub const NOBODY: RunAs = RunAs { uid: 65534, gid: 65534 };

impl RunAs {
    /// The user tasks run as by default: `nobody` (with its primary group, `nogroup` on
    /// Debian), falling back to uid/gid 65534 when the user database does not list it.
    ///
    /// When the node runs as root, tasks run as nobody:nogroup by default; when it does not,
    /// they run as the node's own user (see [`RunAs::default_for_node`]).
    pub fn unprivileged_default() -> RunAs {
        RunAs::lookup("nobody").unwrap_or(NOBODY)
    }

    /// The default for a node running as the current process's user: nobody when root,
    /// otherwise `None` (an unprivileged node cannot switch users, so tasks run as the node's
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
    #[error("user {name:?} does not exist; create it or configure another task user")]
    NotFound { name: String },
    #[error("cannot look up user {name:?} in the user database: {source}")]
    Database { name: String, source: io::Error },
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
    fn nobody_resolves_to_65534() {
        assert_eq!(RunAs::unprivileged_default(), NOBODY);
        assert_eq!(RunAs::lookup("root").unwrap(), RunAs { uid: 0, gid: 0 });
        assert!(matches!(RunAs::lookup("no-such-user-falak"), Err(LookupUserError::NotFound { .. })));
    }
}
