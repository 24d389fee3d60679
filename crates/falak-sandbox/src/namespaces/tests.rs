use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use super::*;

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

fn run_in(isolation: Isolation, script: &str) -> Output {
    let prepared = isolation.prepare().expect("prepare");
    let mut command = Command::new("/bin/sh");
    command.args(["-c", script]);
    // SAFETY: `enter` makes only async-signal-safe system calls.
    unsafe { command.pre_exec(move || prepared.enter()) };
    command.output().expect("run")
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
    a_view_hides_the_data_dir_but_the_workload_s_own(Namespaces::User);
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
    let mut prepared =
        Prepared { flags: 0, maps: None, steps: Vec::new(), network: false, chdir: None, sources: Vec::new() };
    prepared.plan_view(&View::hiding(vec![data.clone()]).writable(data.join("work"))).unwrap();
    let Some(Step::Hide(first)) = prepared.steps.first() else { panic!("{:?}", prepared.steps) };
    assert_eq!(first.to_str().unwrap(), closed.to_str().unwrap(), "the closed dir is covered, so anyone may pass it");
    // As nobody, through the namespace, the work dir is reachable and the rest is not.
    let isolation = Isolation::new(Namespaces::Privileged)
        .view(View::hiding(vec![data.clone()]).writable(data.join("work")))
        .chdir(data.join("work"));
    let prepared = isolation.prepare().unwrap();
    let mut command = Command::new("/bin/sh");
    command.args(["-c", &format!("pwd; cat {} 2>/dev/null || echo hidden", closed.join("mesh/README").display())]);
    // SAFETY: raw system calls only.
    unsafe {
        command.pre_exec(move || {
            prepared.enter()?;
            if libc::setgid(65534) == -1 || libc::setuid(65534) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = stdout(&command.output().unwrap());
    assert_eq!(out, format!("{}\nhidden\n", data.join("work").display()));
}
