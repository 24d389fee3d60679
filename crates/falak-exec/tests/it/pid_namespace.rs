//! Each task attempt in a pid namespace of its own (`falak_sandbox::init`), as a root node
//! makes it and as an unprivileged node does (a user namespace; the `falak-sandbox` tests run
//! that path as a user who is not root, too).

use std::time::Duration;

use falak_exec::{Executor, ExitReason, Namespaces, ProcessConfig, ProcessExecutor};

use crate::{CGROUP_SCOPE, assert_dies, read_pid, require_root, sh, spec};

/// A node's executor whose workloads get namespaces the way `namespaces` says.
fn executor_with(namespaces: Namespaces) -> ProcessExecutor {
    let (mut config, report) = ProcessConfig::sandboxed(CGROUP_SCOPE);
    assert!(report.pid_namespaces, "{report}");
    config.workload.namespaces = namespaces;
    config.timeout_grace = Duration::from_millis(300);
    ProcessExecutor::new(config)
}

/// Wait for the task's stdout to hold a line `ready`.
async fn wait_ready(spec: &falak_exec::TaskSpec) {
    for _ in 0..1000 {
        if std::fs::read_to_string(spec.workdir.join("stdout.log")).is_ok_and(|out| out.contains("ready\n")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the task never got ready");
}

/// What a task sees of processes: itself and what it starts, under its namespace's init;
/// not the node, not another task, not the init's environment (a copy of the node's).
async fn a_task_sees_only_its_own_processes(namespaces: Namespaces) {
    let executor = executor_with(namespaces);
    let dir = tempfile::tempdir().unwrap();
    let other_spec = spec(&dir, "j1-t0", sh("sleep 1000.4242 & echo ready; wait"));
    let other = executor.start(other_spec.clone()).await.unwrap();
    wait_ready(&other_spec).await;
    let node = std::process::id();
    let script = format!(
        "echo $$; echo /proc/[0-9]*; cat /proc/*/cmdline | tr '\\0' ' ' | grep -c 'sleep 1000[.]4242'; \
         [ -e /proc/{node} ] && echo node-visible; cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable; \
         exit 3"
    );
    // (`[.]`: grep's own command line, and the shell's, must not match.)
    let exit = executor.start(spec(&dir, "j2-t0", sh(&script))).await.unwrap().wait().await;
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert_eq!(exit.stdout_tail, "2\n/proc/1 /proc/2\n0\n", "{exit:?}");
    other.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn privileged_a_task_sees_only_its_own_processes() {
    require_root();
    a_task_sees_only_its_own_processes(Namespaces::Privileged).await;
}

#[tokio::test]
async fn privileged_in_a_user_namespace_a_task_sees_only_its_own_processes() {
    require_root();
    a_task_sees_only_its_own_processes(Namespaces::User).await;
}

/// SIGTERM (stop, and a timeout) reaches the task, not a pid 1 that would ignore it: a task
/// that does not trap it ends of it well within the grace, and says so.
async fn sigterm_ends_a_task_within_the_grace(namespaces: Namespaces) {
    let executor = executor_with(namespaces);
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("echo ready; sleep 1000"));
    let running = executor.start(spec.clone()).await.unwrap();
    wait_ready(&spec).await;
    let exit = running.stop(Duration::from_secs(10)).await;
    assert_eq!((exit.reason.clone(), exit.signal), (ExitReason::Stopped, Some(libc::SIGTERM)), "{exit:?}");
    assert!(exit.duration < Duration::from_secs(5), "{exit:?}");

    // A trap decides how the task ends, as without a pid namespace.
    let spec = crate::spec(&dir, "j2-t0", sh("trap 'echo bye; exit 5' TERM; echo ready; while :; do sleep 0.05; done"));
    let running = executor.start(spec.clone()).await.unwrap();
    wait_ready(&spec).await;
    let exit = running.stop(Duration::from_secs(10)).await;
    assert_eq!((exit.code, exit.signal, exit.stdout_tail.as_str()), (Some(5), None, "ready\nbye\n"), "{exit:?}");
}

#[tokio::test]
async fn privileged_sigterm_ends_a_task_within_the_grace() {
    require_root();
    sigterm_ends_a_task_within_the_grace(Namespaces::Privileged).await;
}

#[tokio::test]
async fn privileged_in_a_user_namespace_sigterm_ends_a_task_within_the_grace() {
    require_root();
    sigterm_ends_a_task_within_the_grace(Namespaces::User).await;
}

/// A daemon the task double-forks out of its process group, on a node without cgroups (where
/// nothing else could find it), dies when the task ends: the namespace ends with its init.
async fn a_task_leaves_nothing_running_even_without_cgroups(namespaces: Namespaces) {
    let mut config = ProcessConfig::without_cgroups();
    config.workload.namespaces = namespaces;
    let executor = ProcessExecutor::new(config);
    let dir = tempfile::tempdir().unwrap();
    let script = "setsid sh -c 'echo $$ > daemon.tmp; mv daemon.tmp daemon.pid; exec sleep 1000' & \
                  while [ ! -e go ]; do sleep 0.01; done; exit 0";
    let spec = spec(&dir, "j1-t0", sh(script));
    let running = executor.start(spec.clone()).await.unwrap();
    let daemon = read_pid(running.pid().unwrap(), &spec.workdir, "daemon.pid").await;
    std::fs::write(spec.workdir.join("go"), "").unwrap();
    let exit = running.wait().await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_dies(daemon).await;
}

#[tokio::test]
async fn privileged_a_task_leaves_nothing_running_even_without_cgroups() {
    require_root();
    a_task_leaves_nothing_running_even_without_cgroups(Namespaces::Privileged).await;
}

#[tokio::test]
async fn privileged_in_a_user_namespace_a_task_leaves_nothing_running_even_without_cgroups() {
    require_root();
    a_task_leaves_nothing_running_even_without_cgroups(Namespaces::User).await;
}

#[tokio::test]
async fn privileged_exit_codes_and_signals_pass_through_the_relay() {
    require_root();
    for namespaces in [Namespaces::Privileged, Namespaces::User] {
        let executor = executor_with(namespaces);
        let dir = tempfile::tempdir().unwrap();
        let exit = executor.start(spec(&dir, "j1-t0", sh("exit 3"))).await.unwrap().wait().await;
        assert_eq!((exit.code, exit.signal), (Some(3), None), "{namespaces:?}");
        let exit = executor.start(spec(&dir, "j1-t1", sh("kill -KILL $$"))).await.unwrap().wait().await;
        assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGKILL)), "{namespaces:?}");
        assert_eq!(exit.error().unwrap(), "killed by signal SIGKILL (9)");
        let exit = executor.start(spec(&dir, "j1-t2", sh("kill -SEGV $$"))).await.unwrap().wait().await;
        assert_eq!((exit.code, exit.signal), (None, Some(libc::SIGSEGV)), "{namespaces:?}");
    }
}
