//! The process executor's lifecycle: output, exit codes, timeouts, stop, start failures.

use std::time::Duration;

use falak_exec::{Executor, ExitReason, StartError, Stream};

use crate::{assert_dies, executor, read_pid, run, sh, spec, start};

#[tokio::test]
async fn echo_sees_its_env_and_stdin_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh(r#"echo "$GREETING"; cat; echo; env | sort"#));
    spec.env.insert("GREETING".into(), "hello falak".into());
    spec.stdin = Some(b"from stdin".to_vec());
    let exit = run(spec.clone()).await;
    assert!(exit.succeeded(), "{exit:?}");
    let workdir = spec.workdir.display();
    let expected = format!(
        "hello falak\nfrom stdin\nFALAK_ATTEMPT=1\nFALAK_TASK_ID=j1-t0\nGREETING=hello falak\nHOME={workdir}\n\
         PATH={}\nPWD={workdir}\nTMPDIR={workdir}/tmp\n",
        falak_exec::DEFAULT_PATH
    );
    assert_eq!(exit.stdout_tail, expected);
    assert_eq!(exit.stderr_tail, "");
}

#[tokio::test]
async fn stdin_is_dev_null_when_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(spec(&dir, "j1-t0", sh("cat; echo done"))).await;
    assert_eq!(exit.stdout_tail, "done\n");
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let failed = run(spec(&dir, "j1-t0", sh("echo oops >&2; exit 3"))).await;
    assert_eq!((failed.reason.clone(), failed.code, failed.signal), (ExitReason::Exited, Some(3), None));
    assert!(!failed.succeeded());
    assert_eq!(failed.error(), None);
    assert_eq!(failed.stderr_tail, "oops\n");

    let killed = run(spec(&dir, "j1-t1", sh("kill -KILL $$"))).await;
    assert_eq!((killed.reason.clone(), killed.code, killed.signal), (ExitReason::Exited, None, Some(9)));
    assert_eq!(killed.error().unwrap(), "killed by signal SIGKILL (9)");
}

#[tokio::test]
async fn tails_are_capped_and_the_whole_output_stays_in_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("head -c 10000 /dev/zero | tr '\\0' a; echo END; echo ERR-END >&2"));
    spec.output_tail_bytes = 16;
    let exit = run(spec.clone()).await;
    assert_eq!(exit.stdout_tail, "aaaaaaaaaaaaEND\n");
    assert_eq!(exit.stderr_tail, "ERR-END\n");

    let executor = executor();
    let log = executor.read_log(&spec.workdir, Stream::Stdout, Some(9998), 100).await.unwrap();
    assert_eq!((log.data.as_slice(), log.offset, log.next_offset, log.size), (&b"aaEND\n"[..], 9998, 10004, 10004));
    let tail = executor.read_log(&spec.workdir, Stream::Stderr, None, 4).await.unwrap();
    assert_eq!(tail.data, b"END\n");
}

#[tokio::test]
async fn fifty_megabytes_of_output_go_to_disk_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("head -c 52428800 /dev/zero | tr '\\0' x; echo THE-END"));
    spec.output_tail_bytes = 8;
    let exit = run(spec.clone()).await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_eq!(exit.stdout_tail, "THE-END\n");
    let size = std::fs::metadata(spec.workdir.join("stdout.log")).unwrap().len();
    assert_eq!(size, 52_428_800 + 8);
    // The node never held the output: its peak memory stays far below 50 MB.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    assert!(peak_kib < 40 * 1024, "peak RSS {peak_kib} KiB");
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("sleep 1000 & echo $! > grandchild.pid; sleep 1000"));
    spec.timeout = Some(Duration::from_millis(300));
    let running = start(spec.clone()).await;
    let leader = running.pid().unwrap();
    let grandchild = read_pid(leader, &spec.workdir, "grandchild.pid").await;
    let exit = running.wait().await;
    assert_eq!(exit.reason, ExitReason::TimedOut(Duration::from_millis(300)));
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert_eq!(exit.error().unwrap(), "timed out after 300ms and was killed");
    assert!(exit.duration >= Duration::from_millis(300) && exit.duration < Duration::from_secs(5), "{exit:?}");
    assert_dies(leader).await;
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    // The trap makes the shell and the background sleep (which inherits it) ignore SIGTERM.
    let mut spec = spec(&dir, "j1-t0", sh("trap '' TERM; sleep 1000 & echo $! > grandchild.pid; sleep 1000"));
    spec.timeout = Some(Duration::from_millis(200));
    let running = start(spec.clone()).await;
    let grandchild = read_pid(running.pid().unwrap(), &spec.workdir, "grandchild.pid").await;
    let exit = running.wait().await;
    assert!(matches!(exit.reason, ExitReason::TimedOut(_)), "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(exit.duration >= Duration::from_millis(500), "the 300 ms grace was given: {exit:?}");
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn stop_kills_the_whole_group_and_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("trap '' TERM; sleep 1000 & echo $! > grandchild.pid; echo ready; sleep 1000"));
    let running = start(spec.clone()).await;
    // Wait until the background child exists and the task said so, so the test checks a real
    // grandchild.
    while !std::fs::read_to_string(spec.workdir.join("stdout.log")).is_ok_and(|t| t == "ready\n") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grandchild = read_pid(running.pid().unwrap(), &spec.workdir, "grandchild.pid").await;
    let exit = running.stop(Duration::from_millis(200)).await;
    assert_eq!((exit.reason.clone(), exit.signal), (ExitReason::Stopped, Some(libc::SIGKILL)));
    assert_eq!(exit.stdout_tail, "ready\n");
    assert_eq!(running.wait().await, exit, "every wait returns the same exit");
    assert_eq!(running.stop(Duration::ZERO).await, exit, "stopping an ended task returns its exit");
    assert_dies(running.pid().unwrap()).await;
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn what_the_main_process_leaves_behind_is_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let script = "sleep 1000 & echo $! > grandchild.pid; while [ ! -e go ]; do sleep 0.01; done; exit 0";
    let spec = spec(&dir, "j1-t0", sh(script));
    let running = start(spec.clone()).await;
    let grandchild = read_pid(running.pid().unwrap(), &spec.workdir, "grandchild.pid").await;
    std::fs::write(spec.workdir.join("go"), "").unwrap();
    let exit = running.wait().await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn dropping_the_handle_does_not_lift_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("sleep 1000"));
    spec.timeout = Some(Duration::from_millis(100));
    let pid = start(spec).await.pid().unwrap();
    assert_dies(pid).await;
}

#[tokio::test]
async fn a_missing_command_is_a_start_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for program in ["falak-no-such-command", "/no/such/program"] {
        let spec = spec(&dir, "j1-t0", vec![program.into(), "arg".into()]);
        let err = executor().start(spec).await.unwrap_err();
        assert!(matches!(err, StartError::CommandNotFound { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(program) && message.contains("no such file"), "{message}");
    }
}

#[tokio::test]
async fn a_command_that_is_not_executable_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "not a program").unwrap();
    let spec = spec(&dir, "j1-t0", vec![data.display().to_string()]);
    let err = executor().start(spec).await.unwrap_err();
    assert!(matches!(err, StartError::PermissionDenied { .. }), "{err:?}");
}

#[tokio::test]
async fn an_invalid_spec_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", vec![]);
    let err = executor().start(spec.clone()).await.unwrap_err();
    assert!(err.to_string().contains("command is empty"), "{err}");
    assert!(!spec.workdir.exists());
}

#[tokio::test]
async fn stats_see_the_group_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("sleep 1000 & echo started; sleep 1000"));
    let running = start(spec.clone()).await;
    while !std::fs::read_to_string(spec.workdir.join("stdout.log")).unwrap().contains("started") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = running.stats().await;
    // The shell, the background sleep and (unless the shell execs it) the foreground one.
    assert!(stats.processes.unwrap() >= 2, "{stats:?}");
    assert!(stats.rss_bytes.unwrap() > 0);
    assert!(stats.elapsed > Duration::ZERO);
    let exit = running.stop(Duration::from_secs(1)).await;
    let after = running.stats().await;
    assert_eq!((after.processes, after.elapsed), (Some(0), exit.duration));
}

#[test]
fn shutting_down_the_runtime_kills_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir, "j1-t0", sh("sleep 1000 & echo $! > grandchild.pid; sleep 1000"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (running, grandchild) = runtime.block_on(async {
        let running = start(spec.clone()).await;
        let grandchild = read_pid(running.pid().unwrap(), &spec.workdir, "grandchild.pid").await;
        (running, grandchild)
    });
    drop(runtime);
    // The handle outlives the runtime; the group must not.
    let check = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    check.block_on(async {
        assert_dies(running.pid().unwrap()).await;
        assert_dies(grandchild).await;
    });
}
