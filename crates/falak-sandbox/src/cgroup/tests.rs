use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::*;

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_owned()
}

const LIMITS: CgroupLimits = CgroupLimits { memory_bytes: Some(64 << 20), cpu_millis: Some(250), max_pids: Some(64) };

#[test]
fn v1_limits_land_in_each_controller_s_directory() {
    let root = tempfile::tempdir().unwrap();
    let scope = |controller: &str| {
        let dir = root.path().join(controller).join("falak/node-1");
        fs::create_dir_all(&dir).unwrap();
        dir
    };
    let memory = scope("memory");
    fs::write(memory.join("memory.memsw.limit_in_bytes"), "").unwrap();
    let cgroups = Cgroups::at_v1(vec![
        (Controller::Memory, memory),
        (Controller::Cpu, scope("cpu")),
        (Controller::Pids, scope("pids")),
    ]);
    assert_eq!((cgroups.version(), cgroups.missing()), (CgroupVersion::V1, vec![]));

    let workload = cgroups.create("j1-t0/1", &LIMITS).unwrap();
    let dir = |c| workload.dir(c).unwrap().to_owned();
    assert_eq!(dir(Controller::Memory), root.path().join("memory/falak/node-1/j1-t0_1"));
    assert_eq!(read(&dir(Controller::Memory).join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(&dir(Controller::Memory).join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(&dir(Controller::Cpu).join("cpu.shares")), "256");
    assert_eq!(read(&dir(Controller::Pids).join("pids.max")), "64");
    assert!(dir(Controller::Cpu).join("pids.max").metadata().is_err(), "each file only where it belongs");

    // The kernel makes cgroup.procs; here the test does.
    for c in [Controller::Memory, Controller::Cpu, Controller::Pids] {
        fs::write(dir(c).join("cgroup.procs"), "").unwrap();
    }
    assert_eq!(workload.join_files().unwrap().len(), 3);
    assert_eq!(workload.memory_kill(), None);
}

#[test]
fn v2_limits_use_the_features_the_scope_has() {
    let root = tempfile::tempdir().unwrap();
    let scope = root.path().join("falak/node-1");
    fs::create_dir_all(&scope).unwrap();
    fs::write(scope.join("memory.swap.max"), "").unwrap();
    let cgroups = Cgroups::at_v2(scope.clone(), &[Controller::Memory, Controller::Pids]);
    assert_eq!(cgroups.missing(), vec![Controller::Cpu]);

    let workload = cgroups.create("j1-t0-1", &LIMITS).unwrap();
    let dir = scope.join("j1-t0-1");
    assert_eq!(workload.dir(Controller::Memory), Some(dir.as_path()));
    assert_eq!(read(&dir.join("memory.max")), "67108864");
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("pids.max")), "64");
    assert!(!dir.join("memory.oom.group").exists(), "not written where the scope lacks it");
    assert!(!dir.join("cpu.max").exists(), "cpu is not enabled");

    fs::write(dir.join("cgroup.procs"), "").unwrap();
    assert_eq!(workload.join_files().unwrap().len(), 1, "one directory, one join");
    fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n").unwrap();
    assert_eq!(workload.memory_kill(), Some(64 << 20));
}

#[test]
fn a_failed_create_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let memory = root.path().join("memory/scope");
    fs::create_dir_all(&memory).unwrap();
    // The pids hierarchy's scope is gone: its directory cannot be made.
    let cgroups =
        Cgroups::at_v1(vec![(Controller::Memory, memory.clone()), (Controller::Pids, root.path().join("gone"))]);
    let error = cgroups.create("w1", &CgroupLimits::default()).unwrap_err();
    assert!(error.to_string().contains("gone/w1"), "{error}");
    assert!(!memory.join("w1").exists(), "the memory cgroup made before the failure is removed");
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "privileged test: run the tests as root (CI does)");
}

/// A scope unique to this test process, removed at the end.
struct Scope(Cgroups);

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = self.0.remove_scope();
    }
}

#[test]
fn privileged_a_real_cgroup_limits_joins_and_kills_even_escaped_processes() {
    require_root();
    let scope = Scope(Cgroups::detect(&format!("sandbox-test-{}", std::process::id())).expect("cgroups"));
    let cgroups = &scope.0;
    assert!(cgroups.missing().is_empty(), "{:?} missing", cgroups.missing());

    let workload = cgroups.create("j1-t0-1", &LIMITS).unwrap();
    assert_eq!(read(&workload.dir(Controller::Pids).unwrap().join("pids.max")), "64");
    let joins = workload.join_files().unwrap();
    let raw: Vec<i32> = joins.iter().map(AsRawFd::as_raw_fd).collect();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("daemon.pid");
    let mut command = Command::new("/bin/sh");
    // The daemon leaves the process group and session: only the cgroup still holds it.
    command
        .args(["-c", &format!("setsid sh -c 'echo $$ > {}; exec sleep 1000' & exec sleep 1000", pid_file.display())]);
    // SAFETY: write is async-signal-safe; the descriptors stay open until after the spawn.
    unsafe {
        command.pre_exec(move || {
            for fd in &raw {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let mut child = command.spawn().unwrap();
    drop(joins);
    while fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let daemon: i32 = read(&pid_file).parse().unwrap();
    let pids = workload.pids().unwrap();
    assert!(pids.contains(&(child.id() as i32)) && pids.contains(&daemon), "{pids:?}");
    assert_eq!(workload.usage().processes, 2);
    assert!(workload.usage().memory_bytes.unwrap() > 0);

    workload.remove().unwrap();
    child.wait().unwrap();
    assert!(workload.dirs.iter().all(|d| !d.exists()));
    let state = fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "the daemon survived: {state}");
}

#[test]
fn privileged_leftovers_of_a_crashed_node_are_killed_and_removed() {
    require_root();
    let scope = Scope(Cgroups::detect(&format!("sandbox-leftover-{}", std::process::id())).expect("cgroups"));
    let cgroups = &scope.0;
    let workload = cgroups.create("old", &CgroupLimits::default()).unwrap();
    let joins = workload.join_files().unwrap();
    let raw: Vec<i32> = joins.iter().map(AsRawFd::as_raw_fd).collect();
    let mut command = Command::new("sleep");
    command.arg("1000");
    // SAFETY: as above.
    unsafe {
        command.pre_exec(move || {
            for fd in &raw {
                libc::write(*fd, b"0".as_ptr().cast(), 1);
            }
            Ok(())
        })
    };
    let mut child = command.spawn().unwrap();
    drop(joins);
    assert_eq!(cgroups.remove_leftovers(), 1);
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
}
