//! What can go wrong preparing a deployment, starting an instance and talking to one.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::BoxError;

/// [`crate::prepare`] failed; nothing was cached (a virtualenv is cached only once complete).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{deployment}: handler {handler:?} is not `module.function`, e.g. `main.handle`")]
    InvalidHandler { deployment: String, handler: String },
    #[error(
        "{deployment}: the handler's module is not in the bundle: looked for {}; add it or fix `handler`",
        looked_for.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
    )]
    MissingHandler { deployment: String, handler: String, looked_for: Vec<PathBuf> },
    #[error("{deployment}: an {runtime} function needs a command, e.g. [\"./server\"]")]
    NoCommand { deployment: String, runtime: &'static str },
    #[error(
        "{deployment}: a container function runs on a node with an OCI runtime and its image unpacked; this one was given neither"
    )]
    NoContainer { deployment: String },
    #[error("{deployment}: program {program:?} not found: {hint}")]
    MissingProgram { deployment: String, program: String, hint: String },
    #[error(
        "{deployment}: python interpreter {python} cannot be used: {detail}; install python3 (3.8 or newer) on the node"
    )]
    Python { deployment: String, python: PathBuf, detail: String },
    #[error(
        "{deployment}: installing requirements.txt failed and no virtualenv was cached; the end of the output:\n{output}"
    )]
    Dependencies { deployment: String, output: String },
    #[error(
        "{deployment}: the work dir {} is too long for the instances' Unix sockets ({len} bytes, at most {max}); use a shorter data dir",
        path.display()
    )]
    WorkDirTooLong { deployment: String, path: PathBuf, len: usize, max: usize },
    #[error("{deployment}: the instance user (uid {uid}) cannot reach {what} {}: {hint}", path.display())]
    Unreachable { deployment: String, what: &'static str, path: PathBuf, uid: u32, hint: String },
    #[error("{deployment}: {what} {}: {source}", path.display())]
    Io { deployment: String, what: &'static str, path: PathBuf, source: io::Error },
}

/// Starting a zygote or an instance failed; no process was left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{deployment}: only python functions have a zygote; start {runtime} instances with `spawn`")]
    NoZygote { deployment: String, runtime: &'static str },
    #[error("{deployment}: loading the handler failed: {error}")]
    Load { deployment: String, error: String },
    #[error("{deployment}: starting {what} ({}) failed: {source}", program.display())]
    Spawn { deployment: String, what: String, program: PathBuf, source: io::Error },
    #[error("{deployment}: {what} exited before it was ready ({status}); its output is in {}", log.display())]
    Exited { deployment: String, what: String, status: String, log: PathBuf },
    #[error("{deployment}: {what} was not ready within {timeout:?}; its output is in {}", log.display())]
    Timeout { deployment: String, what: String, timeout: Duration, log: PathBuf },
    #[error("{deployment}: the zygote (pid {pid}) has exited; start a new one; its output is in {}", log.display())]
    ZygoteExited { deployment: String, pid: u32, log: PathBuf },
    #[error("{deployment}: the zygote could not fork instance {instance}: {error}")]
    Fork { deployment: String, instance: u64, error: String },
    #[error("{deployment}: instance {instance} did not pass its first health check: {source}")]
    Health { deployment: String, instance: u64, source: Box<InstanceError> },
    #[error("{deployment}: {what}: {source}")]
    Io { deployment: String, what: String, source: io::Error },
    #[error("{deployment}: cannot confine {what}: {step}: {source}")]
    Sandbox { deployment: String, what: String, step: String, source: io::Error },
}

/// A request to an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "instance {instance} of {deployment} {}, so the request got no (complete) response; its output is in {}",
        exit_words(*memory_limit),
        log.display()
    )]
    Crashed {
        deployment: String,
        instance: u64,
        log: PathBuf,
        /// Set when the kernel killed it for going over its cgroup's memory limit.
        memory_limit: Option<u64>,
    },
    #[error("instance {instance} of {deployment} is stopped; send to another instance")]
    Stopped { deployment: String, instance: u64 },
    #[error("connecting to instance {instance} of {deployment} at {target} failed: {source}")]
    Connect { deployment: String, instance: u64, target: String, source: io::Error },
    #[error("the HTTP exchange with instance {instance} of {deployment} failed: {source}")]
    Http { deployment: String, instance: u64, source: hyper::Error },
    #[error("instance {instance} of {deployment} answered its health check with {status}")]
    Unhealthy { deployment: String, instance: u64, status: u16 },
    #[error("instance {instance} of {deployment}: running {} failed: {source}", program.display())]
    Exec { deployment: String, instance: u64, program: PathBuf, source: io::Error },
    #[error("instance {instance} of {deployment}: reading the request body failed: {source}")]
    RequestBody { deployment: String, instance: u64, source: BoxError },
}

/// How a process ended, in words: "exited", or "was killed by its memory limit (N bytes)".
pub(crate) fn exit_words(memory_limit: Option<u64>) -> String {
    match memory_limit {
        Some(bytes) => format!("was killed by its memory limit ({bytes} bytes)"),
        None => "exited".to_owned(),
    }
}
