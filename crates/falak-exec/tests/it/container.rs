//! Containers through the process executor and a real OCI runtime (Debian's `runc`), on a root
//! filesystem of Debian's static busybox. Both are in `.ci/run`'s packages; the tests fail,
//! saying what to install, where they are missing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use falak_exec::{
    ContainerRuntime, ContainerTask, Executor, ExitReason, ProcessConfig, ProcessExecutor, ReadOnlyMount, RunAs,
    TaskSpec,
};
use tempfile::TempDir;

use crate::{CGROUP_SCOPE, require_root, sh};

const BUSYBOX: &str = "/usr/bin/busybox";
const APPLETS: [&str; 12] = ["sh", "echo", "cat", "id", "pwd", "sleep", "ls", "dd", "head", "touch", "mkdir", "true"];

/// A root filesystem holding busybox and its applets, and `/etc/marker`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: install Debian's busybox-static (.ci/run does)");
    let rootfs = dir.join("image-rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::create_dir_all(rootfs.join("work")).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/marker"), "from the image\n").unwrap();
    rootfs
}

/// A node's executor with runc as its container runtime, its state in `dir`.
fn container_executor(dir: &Path) -> ProcessExecutor {
    let (config, _) = ProcessConfig::sandboxed(CGROUP_SCOPE);
    let runtime = ContainerRuntime::detect("runc", dir.join("runc-state"))
        .unwrap_or_else(|e| panic!("{e} (install Debian's runc; .ci/run does)"));
    ProcessExecutor::new(ProcessConfig {
        timeout_grace: Duration::from_millis(300),
        containers: Some(runtime),
        ..config
    })
}

fn container_spec(dir: &TempDir, rootfs: &Path, task_id: &str, command: Vec<String>) -> TaskSpec {
    let mut spec = TaskSpec::new(task_id, 1, command, dir.path().join(task_id).join("1"));
    spec.container = Some(ContainerTask {
        rootfs: rootfs.to_owned(),
        cwd: "/work".into(),
        user: RunAs { uid: 0, gid: 0 },
        mounts: Vec::new(),
    });
    spec
}

/// Lines of this process's mount table that mention `path`.
fn host_mounts_under(path: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().filter(|l| l.contains(&*path.to_string_lossy())).map(str::to_owned).collect()
}

#[tokio::test]
async fn privileged_a_container_runs_its_command_in_the_image_and_writes_only_its_own_layer() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let executor = container_executor(dir.path());
    let script = "echo hello $GREETING; pwd; id -u; cat /etc/marker; echo changed > /etc/marker; cat /etc/marker; \
                  cat /data/shipped.txt; touch /data/new 2>/dev/null || echo read-only; echo oops >&2; exit 7";
    let mut spec = container_spec(&dir, &rootfs, "j1-t0", sh(script));
    spec.env.insert("GREETING".into(), "container".into());
    let shipped = dir.path().join("bundle-data");
    std::fs::create_dir_all(&shipped).unwrap();
    std::fs::write(shipped.join("shipped.txt"), "from a bundle\n").unwrap();
    if let Some(container) = spec.container.as_mut() {
        container.mounts.push(ReadOnlyMount { source: shipped.clone(), destination: "/data".into() });
    }
    let exit = executor.start(spec.clone()).await.expect("the container starts").wait().await;
    assert_eq!(exit.reason, ExitReason::Exited, "{exit:?}");
    assert_eq!(exit.code, Some(7), "{exit:?}");
    assert_eq!(
        exit.stdout_tail, "hello container\n/work\n0\nfrom the image\nchanged\nfrom a bundle\nread-only\n",
        "{exit:?}"
    );
    assert!(!shipped.join("new").exists(), "the mount is read-only");
    assert_eq!(exit.stderr_tail, "oops\n");
    // The image is untouched; the change is in the attempt's own layer.
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/marker")).unwrap(), "from the image\n");
    let upper = spec.workdir.join("upper/etc/marker");
    assert_eq!(std::fs::read_to_string(&upper).unwrap(), "changed\n", "the overlay's upper layer holds the write");
    // The next attempt starts from the image again.
    let mut second = container_spec(&dir, &rootfs, "j1-t0", sh("cat /etc/marker"));
    second.attempt = 2;
    second.workdir = dir.path().join("j1-t0/2");
    let exit = executor.start(second).await.unwrap().wait().await;
    assert_eq!((exit.code, exit.stdout_tail.as_str()), (Some(0), "from the image\n"), "{exit:?}");
    assert!(host_mounts_under(dir.path()).is_empty(), "{:?}", host_mounts_under(dir.path()));
}

#[tokio::test]
async fn privileged_a_stopped_container_leaves_no_process_mount_cgroup_or_runtime_state() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let executor = container_executor(dir.path());
    let spec = container_spec(&dir, &rootfs, "j2-t0", sh("echo $$ > /work/pid; sleep 300 & sleep 300; wait"));
    let running = executor.start(spec.clone()).await.expect("the container starts");
    let runtime_pid = running.pid().unwrap();
    let pid_file = spec.workdir.join("upper/work/pid");
    for _ in 0..500 {
        if std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pid_file.exists(), "the container never wrote its pid");
    // The container's processes, seen from the host: every process in the runtime's tree.
    let tree = descendants(runtime_pid);
    assert!(tree.len() >= 3, "runtime, shell and two sleeps expected: {tree:?}");
    let cgroup = cgroup_of(*tree.last().unwrap());
    assert!(cgroup.contains(CGROUP_SCOPE), "the container runs in the attempt's cgroup: {cgroup}");
    let state = dir.path().join("runc-state");
    assert!(state.join("j2-t0.a1").exists(), "runc keeps the container's state while it runs");

    let exit = running.stop(Duration::from_secs(2)).await;
    assert_eq!(exit.reason, ExitReason::Stopped, "{exit:?}");
    for pid in tree {
        crate::assert_dies(pid).await;
    }
    assert!(!state.join("j2-t0.a1").exists(), "the runtime's state is deleted");
    assert!(host_mounts_under(dir.path()).is_empty(), "{:?}", host_mounts_under(dir.path()));
    let cgroup_dirs = cgroup_dirs_named(&cgroup);
    assert!(cgroup_dirs.is_empty(), "the attempt's cgroups are removed: {cgroup_dirs:?}");
}

#[tokio::test]
async fn privileged_a_container_over_its_memory_limit_or_its_timeout_is_ended_and_the_exit_says_so() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let executor = Arc::new(container_executor(dir.path()));
    // `dd` holds a whole block in memory.
    let mut hog = container_spec(&dir, &rootfs, "j3-t0", sh("exec dd if=/dev/zero of=/dev/null bs=256M count=1"));
    hog.limits.memory_bytes = Some(64 << 20);
    let mut slow = container_spec(&dir, &rootfs, "j3-t1", sh("sleep 300"));
    slow.timeout = Some(Duration::from_millis(500));
    let (hog, slow) = tokio::join!(async { executor.start(hog).await.unwrap().wait().await }, async {
        executor.start(slow).await.unwrap().wait().await
    },);
    assert_eq!(hog.reason, ExitReason::MemoryLimit { limit_bytes: 64 << 20 }, "{hog:?}");
    assert_eq!(slow.reason, ExitReason::TimedOut(Duration::from_millis(500)), "{slow:?}");
}

#[tokio::test]
async fn a_node_without_a_runtime_refuses_containers_and_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(ProcessConfig { containers: None, ..ProcessConfig::without_cgroups() });
    let spec = container_spec(&dir, dir.path(), "j4-t0", sh("true"));
    let error = executor.start(spec).await.unwrap_err().to_string();
    assert!(error.contains("cannot run containers") && error.contains("install runc or crun"), "{error}");
    let missing = ContainerRuntime::detect("no-such-runtime", dir.path().join("state")).unwrap_err().to_string();
    assert!(missing.contains("not found in PATH") && missing.contains("container_runtime"), "{missing}");
}

/// `pid` and every process under it, parents before children.
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, ppid)| *ppid == parent).map(|(p, _)| *p));
        i += 1;
    }
    found
}

/// The memory cgroup (v1) or the unified one (v2) of `pid`.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = text.lines().find(|l| l.contains(":memory:")).or_else(|| text.lines().find(|l| l.starts_with("0::")));
    line.and_then(|l| l.rsplit(':').next()).unwrap_or_default().to_owned()
}

/// Directories under `/sys/fs/cgroup` at the path of `cgroup` (any hierarchy).
fn cgroup_dirs_named(cgroup: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join(cgroup.trim_start_matches('/'));
        if dir.exists() {
            found.push(dir);
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(cgroup.trim_start_matches('/'));
    if unified.join("cgroup.procs").exists() {
        found.push(unified);
    }
    found
}
