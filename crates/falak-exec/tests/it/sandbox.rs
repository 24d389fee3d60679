//! The process executor's sandbox defaults, observed from inside the task.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use falak_exec::{
    CgroupSandbox, Controller, Executor, ExitReason, Limits, NOBODY, Network, ProcessConfig, ProcessExecutor, RunAs,
};

use crate::{CGROUP_SCOPE, assert_dies, executor, is_dead, read_pid, require_root, run, sandboxed, sh, spec};

#[tokio::test]
async fn privileged_tasks_run_as_nobody_by_default_when_the_node_is_root() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exit = run(spec(&dir, "j1-t0", sh("id -u; id -g; id -G"))).await;
    assert_eq!(exit.stdout_tail, "65534\n65534\n65534\n", "no supplementary groups: {exit:?}");
}

#[tokio::test]
async fn privileged_run_as_picks_the_user_and_group() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("id -u; id -g"));
    spec.run_as = Some(RunAs { uid: 4242, gid: 4343 });
    let exit = run(spec).await;
    assert_eq!(exit.stdout_tail, "4242\n4343\n");
    assert_eq!(RunAs::unprivileged_default(), NOBODY);
}

#[tokio::test]
async fn privileged_workdir_is_private_to_the_task_and_holds_what_it_writes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("echo data > out.txt; mkdir sub; pwd"));
    let exit = run(spec.clone()).await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_eq!(exit.stdout_tail, format!("{}\n", spec.workdir.display()));
    assert_eq!(std::fs::read_to_string(spec.workdir.join("out.txt")).unwrap(), "data\n");
    assert!(spec.workdir.join("sub").is_dir());
    let meta = std::fs::metadata(&spec.workdir).unwrap();
    assert_eq!((meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()), (0o700, 65534, 65534));
    // The task is in its own directory, not the node's: nothing landed beside it.
    let siblings: Vec<_> = std::fs::read_dir(spec.workdir.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1);
}

#[tokio::test]
async fn no_new_privs_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(spec(&dir, "j1-t0", vec!["grep".into(), "NoNewPrivs".into(), "/proc/self/status".into()])).await;
    assert_eq!(exit.stdout_tail, "NoNewPrivs:\t1\n");
}

#[tokio::test]
async fn only_stdio_descriptors_reach_the_task() {
    // A descriptor without close-on-exec, as a careless library in the node might leave.
    // SAFETY: dup of our own stderr; the copy is closed at the end of the test.
    let leaked = unsafe { libc::dup(2) };
    assert!(leaked > 2);
    let dir = tempfile::tempdir().unwrap();
    // `$$` is the shell itself: `ls` would see its own directory handle in /proc/self/fd.
    let exit = run(spec(&dir, "j1-t0", sh("ls /proc/$$/fd"))).await;
    // SAFETY: `leaked` is the descriptor dup returned above and nothing else closed it.
    unsafe { libc::close(leaked) };
    assert_eq!(exit.stdout_tail, "0\n1\n2\n");
}

#[tokio::test]
async fn rlimits_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", vec!["cat".into(), "/proc/self/limits".into()]);
    spec.limits = Limits { max_open_files: Some(256), max_processes: Some(500), ..Limits::default() };
    let exit = run(spec).await;
    let limit = |name: &str| {
        let line = exit.stdout_tail.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line[name.len()..].split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(limit("Max open files"), "256 256");
    assert_eq!(limit("Max processes"), "500 500");
    assert_eq!(limit("Max core file size"), "0 0");
}

#[tokio::test]
async fn max_file_bytes_bounds_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("exec head -c 5000 /dev/zero"));
    spec.limits.max_file_bytes = Some(1000);
    let exit = run(spec.clone()).await;
    assert_eq!(exit.signal, Some(libc::SIGXFSZ), "{exit:?}");
    assert_eq!(std::fs::metadata(spec.workdir.join("stdout.log")).unwrap().len(), 1000);
}

#[tokio::test]
async fn a_reused_workdir_never_writes_through_links_the_task_left() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("echo fresh"));
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    executor().prepare(&spec).await.unwrap();
    std::os::unix::fs::symlink(&victim, spec.workdir.join("stdout.log")).unwrap();
    std::fs::hard_link(&victim, spec.workdir.join("stderr.log")).unwrap();
    let exit = run(spec.clone()).await;
    assert_eq!(exit.stdout_tail, "fresh\n");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

// The "must show" list: each an executable workload through `ProcessExecutor`, as a
// node runs it (`ProcessConfig::sandboxed`).

/// The cgroup directory of `spec`'s attempt for `controller`.
fn cgroup_dir(spec: &falak_exec::TaskSpec, controller: Controller) -> std::path::PathBuf {
    let cgroups = falak_sandbox::Cgroups::detect(CGROUP_SCOPE).expect("cgroups");
    cgroups.scope_dir(controller).expect("the controller is in use").join(CgroupSandbox::cgroup_name(spec))
}

fn python(script: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), script.into()]
}

/// Wait up to ten seconds (a bound for loaded machines; it takes milliseconds) for the task's
/// stdout to contain `text`.
async fn wait_for_output(spec: &falak_exec::TaskSpec, text: &str) {
    for _ in 0..1000 {
        if std::fs::read_to_string(spec.workdir.join("stdout.log")).is_ok_and(|out| out.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the task never printed {text:?}");
}

#[tokio::test]
async fn privileged_the_node_s_sandbox_has_what_these_tests_need() {
    require_root();
    let (_, report) = sandboxed();
    assert!(report.seccomp, "{report}");
    assert!(report.network_namespaces, "{report}");
    assert!(report.unprivileged_user, "{report}");
    let controllers = &report.cgroup_controllers;
    assert!(report.cgroups.is_some(), "{report}: {:?}", report.missing);
    for wanted in [Controller::Memory, Controller::Cpu, Controller::Pids] {
        assert!(controllers.contains(&wanted), "{report}: {:?}", report.missing);
    }
}

#[tokio::test]
async fn privileged_a_setuid_root_binary_gains_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", vec!["./id".into(), "-u".into()]);
    executor().prepare(&spec).await.unwrap();
    let id = spec.workdir.join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let meta = std::fs::metadata(&id).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o4755));

    // The test can fail: on this filesystem the bit works for a process without no_new_privs.
    let mut plain = std::process::Command::new(&id);
    plain.arg("-u");
    // SAFETY: setgid and setuid are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut plain, || {
            if libc::setgid(65534) == -1 || libc::setuid(65534) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    assert_eq!(String::from_utf8(plain.output().unwrap().stdout).unwrap(), "0\n");

    let exit = run(spec).await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_eq!(exit.stdout_tail, "65534\n", "the setuid bit raised the task's euid");
}

/// A script that writes inside its directory, to its `TMPDIR`, into a root-owned directory
/// like the node's data directory, into `/etc`, and into a world-writable directory outside.
fn write_probe(outside: &std::path::Path) -> Vec<String> {
    sh(&format!(
        "echo in > inside.txt && echo inside-ok; echo t > \"$TMPDIR/t\" && echo tmp-ok; \
         echo x > {data}/escape 2>/dev/null && echo data-written; \
         echo x > /etc/falak-escape 2>/dev/null && echo etc-written; \
         echo x > {open}/escape 2>/dev/null && echo open-written; true",
        data = outside.join("node-data").display(),
        open = outside.join("world-writable").display(),
    ))
}

/// A directory outside the task's, reachable by the task's user: a root-owned `node-data`
/// (0755, like the node's data directory) and a `world-writable` one (0777).
fn outside_dirs() -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode) in [("node-data", 0o755), ("world-writable", 0o777)] {
        std::fs::create_dir(outside.path().join(name)).unwrap();
        std::fs::set_permissions(outside.path().join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    outside
}

#[tokio::test]
async fn privileged_without_landlock_the_user_and_permissions_keep_writes_inside() {
    require_root();
    let outside = outside_dirs();
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = ProcessConfig::sandboxed(CGROUP_SCOPE);
    config.workload.landlock = false;
    let executor = ProcessExecutor::new(config);
    let spec = spec(&dir, "j1-t0", write_probe(outside.path()));
    let exit = executor.start(spec.clone()).await.unwrap().wait().await;
    // Without Landlock a world-writable directory is writable: permissions are all there is.
    assert_eq!(exit.stdout_tail, "inside-ok\ntmp-ok\nopen-written\n", "{exit:?}");
    assert!(!std::path::Path::new("/etc/falak-escape").exists());
    assert!(!outside.path().join("node-data/escape").exists());
    assert_eq!(std::fs::read_to_string(spec.workdir.join("inside.txt")).unwrap(), "in\n");
}

#[tokio::test]
async fn privileged_writing_outside_the_workdir_fails_and_landlock_closes_world_writable_places() {
    require_root();
    let outside = outside_dirs();
    let dir = tempfile::tempdir().unwrap();
    let (executor, report) = sandboxed();
    let spec = spec(&dir, "j1-t0", write_probe(outside.path()));
    let exit = executor.start(spec.clone()).await.unwrap().wait().await;
    let expected = if report.landlock.is_some() {
        "inside-ok\ntmp-ok\n"
    } else {
        // A kernel without Landlock: the other test's result.
        "inside-ok\ntmp-ok\nopen-written\n"
    };
    assert_eq!(exit.stdout_tail, expected, "{report}: {exit:?}");
    assert!(!std::path::Path::new("/etc/falak-escape").exists());
    assert!(!outside.path().join("node-data/escape").exists());
    assert_eq!(std::fs::read_to_string(spec.workdir.join("tmp/t")).unwrap(), "t\n");
}

const FORK_BOMB: &str = "\
import os, time
made = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    made += 1
print('limit reached after', made, flush=True)
time.sleep(60)
";

#[tokio::test]
async fn privileged_a_fork_bomb_stops_at_pids_max_and_is_killed_whole() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", python(FORK_BOMB));
    spec.limits.max_pids = Some(64);
    // A user of its own, so `pgrep -u` sees only this task.
    spec.run_as = Some(RunAs { uid: 47_011, gid: 47_011 });
    spec.timeout = Some(Duration::from_secs(20));
    let pids_dir = cgroup_dir(&spec, Controller::Pids);
    let running = executor().start(spec.clone()).await.unwrap();
    wait_for_output(&spec, "limit reached").await;

    let read = |file: &str| std::fs::read_to_string(pids_dir.join(file)).unwrap();
    assert_eq!(read("pids.max").trim(), "64");
    for _ in 0..10 {
        let current: u64 = read("pids.current").trim().parse().unwrap();
        assert!(current <= 64, "{current} processes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused: u64 = read("pids.events").trim().trim_start_matches("max ").parse().unwrap();
    assert!(refused > 0, "the limit was hit");
    if pids_dir.join("pids.peak").exists() {
        let peak: u64 = read("pids.peak").trim().parse().unwrap();
        assert!(peak <= 64, "peak {peak}");
    }

    let exit = running.stop(Duration::ZERO).await;
    assert_eq!(exit.reason, ExitReason::Stopped);
    assert!(!pids_dir.exists(), "the cgroup is removed");
    // pgrep also lists zombies, which this host's init may take a moment to reap.
    let left = std::process::Command::new("pgrep").args(["-u", "47011"]).output().unwrap();
    for pid in String::from_utf8_lossy(&left.stdout).lines() {
        assert_dies(pid.parse().unwrap()).await;
    }
}

#[tokio::test]
async fn privileged_a_memory_hog_is_killed_by_its_cgroup_and_the_exit_says_so() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", python("x = b'x' * (400 << 20)\nprint('survived')"));
    spec.limits.memory_bytes = Some(64 << 20);
    let exit = run(spec).await;
    assert_eq!(exit.reason, ExitReason::MemoryLimit { limit_bytes: 64 << 20 }, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert_eq!(exit.error().unwrap(), "killed by its memory limit (67108864 bytes)");
    assert_eq!(exit.stdout_tail, "");
}

#[tokio::test]
async fn privileged_io_uring_bpf_keyctl_perf_and_userfaultfd_are_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let calls = [
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("bpf", libc::SYS_bpf),
        ("keyctl", libc::SYS_keyctl),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
    ];
    let list: Vec<String> = calls.iter().map(|(name, nr)| format!("('{name}', {nr})")).collect();
    let script = format!(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nbuf = ctypes.create_string_buffer(256)\n\
         for name, nr in [{}]:\n    rc = libc.syscall(nr, 1, buf, 0, 0, 0)\n    print(name, rc, ctypes.get_errno())\n",
        list.join(", ")
    );
    let exit = run(spec(&dir, "j1-t0", python(&script))).await;
    let expected: String = calls.iter().map(|(name, _)| format!("{name} -1 {}\n", libc::EPERM)).collect();
    assert_eq!(exit.stdout_tail, expected, "{exit:?}");
}

const REACH_NODE: &str = "\
import socket, sys
tcp, udp = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.settimeout(1)
try:
    s.connect(('127.0.0.1', tcp))
    print('tcp connected')
except OSError as e:
    print('tcp refused')
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
try:
    u.sendto(b'ping', ('127.0.0.1', udp))
    u.recv(16)
    print('udp answered')
except OSError:
    print('udp unanswered')
";

/// Run the probe against a TCP listener and a UDP responder bound on 127.0.0.1 in this (the
/// node's) process; returns its output and how many pings reached the responder.
async fn reach_the_node(network: Network) -> (String, usize) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tcp_port, udp_port) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let responder = tokio::spawn(async move {
        let mut pings = 0;
        let mut buf = [0u8; 16];
        while let Ok(Ok((_, from))) = tokio::time::timeout(Duration::from_secs(3), udp.recv_from(&mut buf)).await {
            pings += 1;
            udp.send_to(b"pong", from).await.unwrap();
        }
        pings
    });
    let dir = tempfile::tempdir().unwrap();
    let mut command = python(REACH_NODE);
    command.extend([tcp_port.to_string(), udp_port.to_string()]);
    let mut spec = spec(&dir, "j1-t0", command);
    spec.network = network;
    let exit = run(spec).await;
    responder.abort();
    let pings = responder.await.unwrap_or(0);
    drop(tcp);
    (exit.stdout_tail, pings)
}

#[tokio::test]
async fn privileged_the_node_s_ports_are_out_of_reach_without_network() {
    require_root();
    let (output, pings) = reach_the_node(Network::None).await;
    assert_eq!(output, "tcp refused\nudp unanswered\n");
    assert_eq!(pings, 0);
}

#[tokio::test]
async fn privileged_with_the_host_network_the_node_s_ports_are_reachable() {
    // The other half of the test above: the probe does reach the ports when allowed to.
    require_root();
    let (output, _) = reach_the_node(Network::Host).await;
    assert_eq!(output, "tcp connected\nudp answered\n");
}

/// `setsid` leaves the task's process group and session: only the cgroup still holds it.
const DAEMON: &str = "setsid sh -c 'echo $$ > daemon.tmp; mv daemon.tmp daemon.pid; exec sleep 1000' & \
                      while [ ! -f daemon.pid ]; do sleep 0.01; done";

#[tokio::test]
async fn privileged_a_double_forked_daemon_dies_with_its_task() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh(&format!("{DAEMON}; while [ ! -e go ]; do sleep 0.01; done; exit 0")));
    let running = executor().start(spec.clone()).await.unwrap();
    let daemon = read_pid(running.pid().unwrap(), &spec.workdir, "daemon.pid").await;
    std::fs::write(spec.workdir.join("go"), "").unwrap();
    let exit = running.wait().await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_dies(daemon).await;
}

#[tokio::test]
async fn privileged_stop_kills_a_double_forked_daemon() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh(&format!("{DAEMON}; echo ready; sleep 1000")));
    let running = executor().start(spec.clone()).await.unwrap();
    wait_for_output(&spec, "ready").await;
    let daemon = read_pid(running.pid().unwrap(), &spec.workdir, "daemon.pid").await;
    assert!(!is_dead(daemon));
    let stats = running.stats().await;
    assert!(stats.processes.unwrap() >= 3, "the cgroup counts the daemon: {stats:?}");
    let exit = running.stop(Duration::from_millis(200)).await;
    assert_eq!(exit.reason, ExitReason::Stopped);
    assert_dies(daemon).await;
}

#[tokio::test]
async fn privileged_the_task_starts_inside_its_cgroup_with_its_limits() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("echo $$ > pid; echo ready; exec sleep 1000"));
    spec.limits.cpu_millis = Some(250);
    spec.limits.memory_bytes = Some(128 << 20);
    let running = executor().start(spec.clone()).await.unwrap();
    wait_for_output(&spec, "ready").await;
    let read = |controller, file: &str| {
        let path = cgroup_dir(&spec, controller).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
    };
    let v2 = cgroup_dir(&spec, Controller::Memory).join("memory.max").exists();
    if v2 {
        assert_eq!(read(Controller::Memory, "memory.max"), "134217728");
        assert_eq!(read(Controller::Cpu, "cpu.weight"), "25");
    } else {
        assert_eq!(read(Controller::Memory, "memory.limit_in_bytes"), "134217728");
        assert_eq!(read(Controller::Cpu, "cpu.shares"), "256");
    }
    assert_eq!(read(Controller::Pids, "pids.max"), falak_exec::DEFAULT_MAX_PIDS.to_string());
    // The task's process is listed in every controller's cgroup: it joined before exec. Its
    // pid namespace's init and the relay the node started are not: the limits are the task's.
    let pid = read_pid(running.pid().unwrap(), &spec.workdir, "pid").await.to_string();
    for controller in [Controller::Memory, Controller::Cpu, Controller::Pids] {
        let procs = read(controller, "cgroup.procs");
        assert_eq!(procs.lines().collect::<Vec<_>>(), [pid.as_str()], "{controller}");
    }
    running.stop(Duration::ZERO).await;
    assert!(!cgroup_dir(&spec, Controller::Pids).exists());
}
