//! falak-exec's integration tests: real processes through `ProcessExecutor`, and the
//! recording fake under paused time.
//!
//! Tests named `privileged_*` need root (CI and the dev VMs run tests as root); they fail,
//! rather than skip, when run without it.

mod container;
mod disk;
mod fake;
mod pid_namespace;
mod process;
mod sandbox;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use falak_exec::{Exit, ProcessConfig, ProcessExecutor, Running, SandboxReport, TaskSpec};
use tempfile::TempDir;

/// The cgroup scope the tests' executors share; each attempt's cgroup name hashes its
/// working directory, so concurrent tests never collide.
pub const CGROUP_SCOPE: &str = "falak-exec-tests";

/// `sh -c script`.
pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A process executor as a node makes it (every confinement the host allows), with a short
/// timeout grace so timeout tests stay fast.
pub fn executor() -> ProcessExecutor {
    sandboxed().0
}

/// [`executor`] and what its sandbox enforces.
pub fn sandboxed() -> (ProcessExecutor, SandboxReport) {
    let (config, report) = ProcessConfig::sandboxed(CGROUP_SCOPE);
    (ProcessExecutor::new(ProcessConfig { timeout_grace: Duration::from_millis(300), ..config }), report)
}

/// A spec whose working directory is `<dir>/<task_id>/1`.
pub fn spec(dir: &TempDir, task_id: &str, command: Vec<String>) -> TaskSpec {
    TaskSpec::new(task_id, 1, command, dir.path().join(task_id).join("1"))
}

/// Start `spec` on a fresh executor and wait for its exit.
pub async fn run(spec: TaskSpec) -> Exit {
    start(spec).await.wait().await
}

pub async fn start(spec: TaskSpec) -> Arc<dyn Running> {
    use falak_exec::Executor;
    executor().start(spec).await.expect("the task starts")
}

/// A process is dead once `/proc` no longer lists it or lists it as a zombie (this host's
/// init may not reap orphans).
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, Some("Z" | "X"))
        }
    }
}

/// Wait up to two seconds for `pid` to die: SIGKILL is delivered asynchronously.
pub async fn assert_dies(pid: u32) {
    for _ in 0..200 {
        if is_dead(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} is still alive");
}

/// The host pid of a process of the running task led by `leader` (the process the node
/// started), from the pid the task wrote to `file` in its working directory: a pid in the
/// task's own pid namespace (the one `leader` made for its children), or the host's where
/// there is none. Waits for the whole line.
pub async fn read_pid(leader: u32, workdir: &Path, file: &str) -> u32 {
    let path = workdir.join(file);
    let mut text = String::new();
    for _ in 0..1000 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let inner: u32 = text.trim().parse().unwrap_or_else(|_| panic!("a pid in {}: {text:?}", path.display()));
    let namespace = std::fs::read_link(format!("/proc/{leader}/ns/pid_for_children")).expect("the task runs");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let innermost =
                status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last());
            if innermost == Some(inner.to_string().as_str()) {
                return pid;
            }
        }
    }
    panic!("no process {inner} in the namespace of task process {leader}");
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "privileged test: run the tests as root (CI does)");
}
