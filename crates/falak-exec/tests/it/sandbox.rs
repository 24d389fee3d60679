//! The process executor's sandbox defaults, observed from inside the task.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use falak_exec::{Executor, Limits, NOBODY, RunAs};

use crate::{executor, require_root, run, sh, spec};

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
