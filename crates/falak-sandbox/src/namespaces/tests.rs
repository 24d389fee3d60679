use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::*;
use crate::Confinement;

/// A node's data dir with a key in it and one workload's directory inside.
struct Layout {
    _root: tempfile::TempDir,
    data: PathBuf,
    work: PathBuf,
    other: PathBuf,
}

fn layout() -> Layout {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let work = data.join("tasks/j1-t0.a0");
    let other = data.join("tasks/j2-t0.a0");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(data.join("node.key"), "secret").unwrap();
    std::fs::write(other.join("stdout.log"), "another workload's output").unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    Layout { _root: root, data, work, other }
}

/// `sh -c script`, confined by `isolation` as a workload is (a session of its own, its
/// namespaces and, with a pid namespace, the relay and the init).
fn command_in(isolation: Isolation, script: &str) -> Command {
    confined(Confinement::new().isolation(isolation.prepare().expect("prepare")), script)
}

fn confined(confinement: Confinement, script: &str) -> Command {
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]);
    // SAFETY: `apply` makes only async-signal-safe system calls.
    unsafe { command.pre_exec(move || confinement.apply()) };
    command
}

fn run_in(isolation: Isolation, script: &str) -> Output {
    command_in(isolation, script).output().expect("run")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The whole behaviour of a view, for either kind of namespace.
fn a_view_hides_the_data_dir_but_the_workload_s_own(namespaces: Namespaces) {
    let layout = layout();
    let view = View::hiding(vec![layout.data.clone()]).writable(&layout.work);
    let isolation = Isolation::new(namespaces).network(Network::None).view(view).chdir(&layout.work);
    let script = format!(
        "cat {key} 2>/dev/null || echo key-hidden; cat {log} 2>/dev/null || echo other-hidden; \
         echo mine > {work}/f && cat {work}/f; cat ../../node.key 2>/dev/null || echo parent-hidden; \
         pwd; ls {data}; echo x > {data}/new 2>/dev/null || echo hidden-read-only; \
         grep -c : /proc/net/dev",
        key = layout.data.join("node.key").display(),
        log = layout.other.join("stdout.log").display(),
        work = layout.work.display(),
        data = layout.data.display(),
    );
    let out = stdout(&run_in(isolation, &script));
    assert_eq!(
        out,
        format!(
            "key-hidden\nother-hidden\nmine\nparent-hidden\n{}\ntasks\nhidden-read-only\n1\n",
            layout.work.display()
        ),
        "only lo in /proc/net/dev, the data dir empty but for the way to the workload's dir"
    );
    assert_eq!(std::fs::read_to_string(layout.work.join("f")).unwrap(), "mine\n", "the write reached the host");
    assert!(!layout.data.join("new").exists());
}

#[test]
fn a_privileged_node_hides_the_data_dir() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (CI runs as root); the unprivileged case is below");
    a_view_hides_the_data_dir_but_the_workload_s_own(Namespaces::Privileged);
}

#[test]
fn a_user_namespace_maps_the_workload_s_uid_to_the_node_s() {
    a_view_hides_the_data_dir_but_the_workload_s_own(Namespaces::User);
    let layout = layout();
    let isolation = Isolation::new(Namespaces::User)
        .inner_user(Some(RunAs { uid: 600_123, gid: 600_123 }))
        .view(View::hiding(vec![layout.data.clone()]).writable(&layout.work))
        .chdir(&layout.work);
    let out = stdout(&run_in(isolation, "id -u; id -g; touch mine; stat -c %u mine"));
    assert_eq!(out, "600123\n600123\n600123\n");
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(layout.work.join("mine")).unwrap().uid(), me, "the node's uid outside");
}

#[test]
fn a_read_only_exposure_cannot_be_written() {
    let layout = layout();
    let bundle = layout.data.join("functions/greet/bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("main.py"), "code").unwrap();
    let view = View::hiding(vec![layout.data.clone()]).readable(&bundle).writable(bundle.join(".."));
    // The writable parent binds first (shorter path), the read-only bundle over it.
    let isolation = Isolation::new(Namespaces::User).view(view).chdir(&bundle);
    let out = stdout(&run_in(
        isolation,
        "cat main.py; echo; echo x > main.py 2>/dev/null || echo read-only; echo y > ../w && echo parent-writable",
    ));
    assert_eq!(out, "code\nread-only\nparent-writable\n");
    assert_eq!(std::fs::read_to_string(bundle.join("main.py")).unwrap(), "code");
}

#[test]
fn the_probe_finds_namespaces_here() {
    let (found, why) = Namespaces::probe();
    // SAFETY: geteuid has no preconditions.
    let expected = if unsafe { libc::geteuid() } == 0 { Namespaces::Privileged } else { Namespaces::User };
    assert_eq!((found, why.map(|e| e.to_string())), (expected, None));
    assert_eq!(found.probe_pid().map_err(|e| e.to_string()), Ok(()), "and pid namespaces");
    assert_eq!(Namespaces::Unavailable.probe_pid().map_err(|e| e.kind()), Err(io::ErrorKind::Unsupported));
}

/// A `sleep` no other process on the host runs: `sleep <seconds>.<this test's pid><n>`.
fn unique_sleep(n: u32) -> String {
    format!("1000.{}{n}", std::process::id())
}

/// The host pids of live (not zombie) processes whose command line is `sleep <duration>`.
fn sleeping(duration: &str) -> Vec<u32> {
    let wanted = format!("sleep\0{duration}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
        if cmdline.ends_with(wanted.as_bytes()) && !zombie {
            found.push(pid);
        }
    }
    found
}

/// Poll `done` every 10 ms for up to five seconds (the clock is not read outside clock
/// modules, tests included).
fn within_five_seconds(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not within five seconds");
}

/// The exit status of `child`, which must exit within five seconds.
fn exit_within_five_seconds(child: &mut std::process::Child) -> std::process::ExitStatus {
    let mut status = None;
    within_five_seconds("the workload's exit", || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    status.expect("exited")
}

/// Start `script` confined, and wait for it to print `ready`.
fn start_ready(namespaces: Namespaces, script: &str) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = command_in(Isolation::new(namespaces).network(Network::None), script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "ready\n", "{child:?}");
    (child, stdout)
}

/// The whole behaviour of a pid namespace, for either kind of namespace.
fn a_pid_namespace_holds_the_workload_alone(namespaces: Namespaces) {
    let isolation = || Isolation::new(namespaces).network(Network::None);
    // Only the init, the workload and what it starts are in /proc; the node is not.
    let sleep = unique_sleep(1);
    let out = run_in(isolation(), &format!("echo $$; sleep {sleep} & echo /proc/[0-9]*; kill $!; exit 7"));
    assert_eq!(out.status.code(), Some(7), "the exit code passes through the relay: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n/proc/1 /proc/2 /proc/3\n", "{out:?}");

    // A signal death is reported as the same signal.
    let out = run_in(isolation(), "kill -KILL $$");
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let out = run_in(isolation(), "kill -TERM $$");
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{out:?}");

    // What the workload leaves behind ends with it (`output` also waits for the grandchild to
    // close the stdout it holds).
    let sleep = unique_sleep(2);
    let out = run_in(isolation(), &format!("sleep {sleep} & exit 0"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(sleeping(&sleep), Vec::<u32>::new(), "the namespace died with its init");

    // SIGTERM to the process group reaches the workload, whose trap decides the exit; the
    // relay and the init, in the same group, do not die of it.
    let (mut child, _stdout) = start_ready(namespaces, "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done");
    // SAFETY: kill on the process group of our own child.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM) };
    assert_eq!(exit_within_five_seconds(&mut child).code(), Some(42));

    // A workload that left the process group still gets it: the init passes it on.
    let script = "exec setsid sh -c \"trap 'exit 43' TERM; echo ready; while :; do sleep 0.05; done\"";
    let (mut child, _stdout) = start_ready(namespaces, script);
    // SAFETY: as above.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM) };
    assert_eq!(exit_within_five_seconds(&mut child).code(), Some(43));

    // SIGKILL to the group ends the whole namespace.
    let sleep = unique_sleep(3);
    let (mut child, _stdout) = start_ready(namespaces, &format!("sleep {sleep} & echo ready; wait"));
    within_five_seconds("the background sleep", || !sleeping(&sleep).is_empty());
    // SAFETY: as above.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    assert_eq!(exit_within_five_seconds(&mut child).signal(), Some(libc::SIGKILL));
    within_five_seconds("the end of the workload's child", || sleeping(&sleep).is_empty());

    // An exec error still reaches the spawner, through the workload's copy of std's pipe.
    let prepared = isolation().prepare().unwrap();
    let mut missing = Command::new("/no/such/program");
    let confinement = Confinement::new().isolation(prepared);
    // SAFETY: as in `confined`.
    unsafe { missing.pre_exec(move || confinement.apply()) };
    let error = missing.spawn().expect_err("no such program");
    assert_eq!(error.raw_os_error(), Some(libc::ENOENT), "{error}");
}

#[test]
fn a_privileged_node_gives_each_workload_a_pid_namespace() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (CI runs as root); the unprivileged case is below");
    a_pid_namespace_holds_the_workload_alone(Namespaces::Privileged);
}

#[test]
fn a_user_namespace_gives_each_workload_a_pid_namespace() {
    a_pid_namespace_holds_the_workload_alone(Namespaces::User);
}

/// Runs [`the_host_s_proc_stays_the_host_s`] in a mount namespace of its own whose mounts are
/// all shared, as systemd makes them on most hosts (this test host's are private): a root
/// node's workloads must not mount their `/proc` over the node's.
#[test]
fn a_workload_s_proc_never_reaches_a_host_whose_mounts_are_shared() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (CI runs as root)");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "shared", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "namespaces::tests::the_host_s_proc_stays_the_host_s", "--ignored", "--nocapture"])
        .output()
        .expect("unshare (util-linux) runs the test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the scenario ran: {text}");
}

#[test]
#[ignore = "run by a_workload_s_proc_never_reaches_a_host_whose_mounts_are_shared"]
fn the_host_s_proc_stays_the_host_s() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mountinfo.lines().any(|l| l.split(' ').nth(4) == Some("/") && l.contains("shared:")), "{mountinfo}");
    for namespaces in [Namespaces::Privileged, Namespaces::User] {
        // No view: nothing else to mount, only the init's /proc.
        assert_eq!(stdout(&run_in(Isolation::new(namespaces), "echo $$")), "2\n");
        let me = std::fs::read_link("/proc/self").expect("the host's /proc");
        assert_eq!(me.to_str(), Some(std::process::id().to_string().as_str()), "{namespaces:?}");
    }
}

#[test]
fn without_a_pid_namespace_the_workload_is_the_child_itself() {
    let out = run_in(Isolation::new(Namespaces::User).pid_namespace(false), "echo $$");
    let pid: u32 = stdout(&out).trim().parse().unwrap();
    assert!(pid > 2, "the host's pid, not the namespace's: {pid}");
}

#[test]
fn an_exposed_path_that_does_not_exist_is_named() {
    let layout = layout();
    let missing = layout.data.join("nope");
    let error =
        Isolation::new(Namespaces::User).view(View::hiding(vec![layout.data.clone()]).writable(&missing)).prepare();
    let error = error.expect_err("a missing dir");
    assert!(error.to_string().contains(&missing.display().to_string()), "{error}");
}

#[test]
fn without_namespaces_a_private_network_is_refused() {
    let error = Isolation::new(Namespaces::Unavailable).network(Network::None).prepare().expect_err("refused");
    assert_eq!(error.kind(), io::ErrorKind::Unsupported);
    assert!(Isolation::new(Namespaces::Unavailable).prepare().is_ok());
}

/// Runs [`as_an_unprivileged_user`] as nobody, the way a user who is not root runs a node:
/// CI runs as root, so nothing else covers the user-namespace path for real.
#[test]
fn an_unprivileged_user_gets_the_same_isolation() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: run the scenario directly.
        return as_an_unprivileged_user();
    }
    // A copy nobody may run, wherever the checkout is (a CI checkout under /root is not).
    let copy = tempfile::tempdir().unwrap();
    std::fs::set_permissions(copy.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = copy.path().join("falak-sandbox-tests");
    std::fs::copy(std::env::current_exe().unwrap(), &me).unwrap();
    std::fs::set_permissions(&me, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&me)
        .args(["--exact", "namespaces::tests::as_an_unprivileged_user", "--ignored", "--nocapture"])
        .env("TMPDIR", "/tmp")
        .output()
        .expect("setpriv (util-linux) runs the test binary as nobody");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "as nobody: {text}");
    assert!(text.contains("1 passed"), "the unprivileged scenario ran: {text}");
}

#[test]
#[ignore = "run by an_unprivileged_user_gets_the_same_isolation as nobody"]
fn as_an_unprivileged_user() {
    // SAFETY: geteuid has no preconditions.
    assert_ne!(unsafe { libc::geteuid() }, 0, "must run unprivileged");
    let (found, why) = Namespaces::probe();
    assert_eq!(found, Namespaces::User, "{why:?}");
    assert_eq!(found.probe_pid().map_err(|e| e.to_string()), Ok(()));
    a_view_hides_the_data_dir_but_the_workload_s_own(Namespaces::User);
    a_pid_namespace_holds_the_workload_alone(Namespaces::User);
}

#[test]
fn descriptor_paths_are_spelled_out() {
    let path = fd_path(1234);
    assert_eq!(std::ffi::CStr::from_bytes_until_nul(&path).unwrap().to_str().unwrap(), "/proc/self/fd/1234");
    assert_eq!(std::ffi::CStr::from_bytes_until_nul(&fd_path(0)).unwrap().to_str().unwrap(), "/proc/self/fd/0");
}

#[test]
fn a_writable_dir_inside_a_visible_read_only_one_stays_writable() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("w");
    std::fs::create_dir_all(work.join("run")).unwrap();
    let view = View::default().readable(&work).writable(work.join("run"));
    let isolation = Isolation::new(Namespaces::User).view(view).chdir(&work);
    let out =
        stdout(&run_in(isolation, "echo x > f 2>/dev/null || echo read-only; echo y > run/f && echo run-writable"));
    assert_eq!(out, "read-only\nrun-writable\n");
}

#[test]
fn a_hidden_dir_inside_a_closed_one_is_hidden_from_the_closed_one_down() {
    let root = tempfile::tempdir().unwrap();
    let closed = root.path().join("closed");
    let data = closed.join("mesh/.falak/n1");
    std::fs::create_dir_all(data.join("work")).unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(closed.join("mesh/README"), "beside the data dir").unwrap();
    let mut prepared = Prepared::nothing();
    prepared.plan_view(&View::hiding(vec![data.clone()]).writable(data.join("work"))).unwrap();
    let Some(Step::Hide(first)) = prepared.steps.first() else { panic!("{:?}", prepared.steps) };
    assert_eq!(first.to_str().unwrap(), closed.to_str().unwrap(), "the closed dir is covered, so anyone may pass it");
    // As nobody, through the namespace, the work dir is reachable and the rest is not.
    let isolation = Isolation::new(Namespaces::Privileged)
        .view(View::hiding(vec![data.clone()]).writable(data.join("work")))
        .chdir(data.join("work"));
    let confinement = Confinement::new().isolation(isolation.prepare().unwrap()).run_as(Some(crate::NOBODY));
    let script = format!("pwd; cat {} 2>/dev/null || echo hidden", closed.join("mesh/README").display());
    let out = stdout(&confined(confinement, &script).output().unwrap());
    assert_eq!(out, format!("{}\nhidden\n", data.join("work").display()));
}
