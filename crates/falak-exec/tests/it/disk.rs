//! Disk limits: the working directory measured against `Limits::disk_bytes`, `RLIMIT_FSIZE`
//! at the same limit, and the node's reserve.

use std::time::Duration;

use falak_exec::disk::{FsSpace, KEPT_LOG_BYTES};
use falak_exec::{DiskConfig, DiskReserve, Executor, Exit, ExitReason, ProcessConfig, ProcessExecutor, StartError};

use crate::{sandboxed, sh, spec};

/// A sandboxed executor that measures every `every` and keeps `reserve`.
fn executor(every: Duration, reserve: Option<DiskReserve>) -> ProcessExecutor {
    let config = sandboxed().0.config().clone();
    ProcessExecutor::new(ProcessConfig { disk: DiskConfig::new(every, reserve), ..config })
}

async fn run_on(executor: &ProcessExecutor, spec: falak_exec::TaskSpec) -> Exit {
    executor.start(spec).await.expect("the task starts").wait().await
}

/// The files left in a working directory, sorted.
fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_task_writing_many_files_without_end_is_stopped_at_its_disk_limit() {
    let dir = tempfile::tempdir().unwrap();
    // One MiB per file, so no single file comes near RLIMIT_FSIZE: only the walk can stop it.
    let script = r#"i=0; while :; do head -c 1048576 /dev/zero >> f$((i=i+1)); echo $i >&2; done"#;
    let mut spec = spec(&dir, "j1-t0", sh(script));
    let limit = 32 << 20;
    spec.limits.disk_bytes = Some(limit);
    spec.timeout = Some(Duration::from_secs(60));
    let exit = run_on(&executor(Duration::from_millis(100), None), spec.clone()).await;
    assert_eq!(exit.reason, ExitReason::DiskLimit { limit_bytes: limit }, "{exit:?}");
    assert_eq!(
        exit.error().unwrap(),
        "killed by its disk limit (33554432 bytes): its working directory grew past resources.disk"
    );
    assert!(exit.duration < Duration::from_secs(30), "stopped within a few walks: {exit:?}");
    let written: u64 = exit.stderr_tail.lines().last().and_then(|l| l.parse().ok()).expect("files written");
    assert!(written >= 28, "it got close to its limit before the stop: {written} MiB");
    println!("32 MiB limit, walks every 100 ms: stopped after {written} MiB in {:?}", exit.duration);
    // What it was stopped for is given back; its logs stay.
    assert_eq!(files_in(&spec.workdir), ["stderr.log", "stdout.log"]);
}

#[tokio::test]
async fn one_file_reaching_the_disk_limit_gets_sigxfsz() {
    let dir = tempfile::tempdir().unwrap();
    // No walk before the test ends: only RLIMIT_FSIZE acts.
    let executor = executor(Duration::from_secs(3600), None);
    let limit = 16 << 20;

    // A child of the task hits the limit; the task itself goes on.
    let mut spec1 = spec(&dir, "j1-t0", sh("head -c 67108864 /dev/zero > big; echo \"head: $?\"; wc -c < big"));
    spec1.limits.disk_bytes = Some(limit);
    let exit = run_on(&executor, spec1).await;
    assert!(exit.succeeded(), "{exit:?}");
    // 153 = 128 + SIGXFSZ, and the file stopped at the limit.
    assert_eq!(exit.stdout_tail, format!("head: 153\n{limit}\n"));

    // The task's own process hits it: the exit names the disk limit, not just the signal.
    let mut spec2 = spec(&dir, "j1-t1", sh("exec head -c 67108864 /dev/zero > big"));
    spec2.limits.disk_bytes = Some(limit);
    let exit = run_on(&executor, spec2.clone()).await;
    assert_eq!((exit.reason.clone(), exit.signal), (ExitReason::DiskLimit { limit_bytes: limit }, Some(libc::SIGXFSZ)));
    assert_eq!(
        exit.error().unwrap(),
        "killed by its disk limit (16777216 bytes): its working directory grew past resources.disk"
    );
    assert_eq!(files_in(&spec2.workdir), ["stderr.log", "stdout.log"]);
}

#[tokio::test]
async fn a_task_within_its_limit_runs_as_usual() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir, "j1-t0", sh("head -c 4194304 /dev/zero > data; sleep 0.5; wc -c < data"));
    spec.limits.disk_bytes = Some(32 << 20);
    let exit = run_on(&executor(Duration::from_millis(50), None), spec.clone()).await;
    assert!(exit.succeeded(), "{exit:?}");
    assert_eq!(exit.stdout_tail, "4194304\n");
    assert!(spec.workdir.join("data").exists(), "nothing is removed from an attempt that was not stopped");
}

#[tokio::test]
async fn logs_count_against_the_limit_and_are_cut_to_their_tail() {
    let dir = tempfile::tempdir().unwrap();
    // Printing without end: the log is one file, so RLIMIT_FSIZE or the walk stops it.
    let mut spec = spec(&dir, "j1-t0", sh("yes falak"));
    spec.limits.disk_bytes = Some(8 << 20);
    let exit = run_on(&executor(Duration::from_millis(100), None), spec.clone()).await;
    assert_eq!(exit.reason, ExitReason::DiskLimit { limit_bytes: 8 << 20 }, "{exit:?}");
    assert!(exit.stdout_tail.contains("falak\nfalak\n"), "the tail is kept: {:?}", exit.stdout_tail);
    assert_eq!(files_in(&spec.workdir), ["stderr.log", "stdout.log"]);
    let kept = std::fs::metadata(spec.workdir.join("stdout.log")).unwrap().len();
    assert!(kept <= KEPT_LOG_BYTES, "{kept}");
}

#[tokio::test]
async fn under_the_reserve_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let space = FsSpace::of(dir.path()).unwrap();
    let reserve = DiskReserve { path: dir.path().to_owned(), bytes: space.total_bytes + 1 };
    let error = executor(Duration::from_millis(100), Some(reserve))
        .start(spec(&dir, "j1-t0", sh("true")))
        .await
        .expect_err("refused");
    assert!(matches!(error, StartError::DiskReserve { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.starts_with("cannot start task j1-t0: this node's disk is under its reserve: "), "{text}");
    assert!(text.ends_with("or lower `disk_reserve` in the node's config"), "{text}");
    assert!(!dir.path().join("j1-t0").exists(), "nothing was created");
}

#[tokio::test]
async fn the_writer_that_pushes_free_space_under_the_reserve_is_stopped_and_a_quiet_task_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let free = FsSpace::of(dir.path()).unwrap().free_bytes;
    // Room for 64 MiB more, then the reserve; the writer's own limit is far above that.
    let reserve = DiskReserve { path: dir.path().to_owned(), bytes: free - (64 << 20) };
    let executor = executor(Duration::from_millis(100), Some(reserve.clone()));
    let mut writer = spec(&dir, "j1-t0", sh("i=0; while :; do head -c 1048576 /dev/zero > f$((i=i+1)); done"));
    writer.limits.disk_bytes = Some(16 << 30);
    writer.timeout = Some(Duration::from_secs(60));
    let mut quiet = spec(&dir, "j1-t1", sh("echo hello; sleep 3; echo still here"));
    quiet.limits.disk_bytes = Some(16 << 30);
    let quiet = executor.start(quiet).await.unwrap();
    let running = executor.start(writer.clone()).await.unwrap();
    let stopped = running.wait().await;
    let free_at_stop = match &stopped.reason {
        ExitReason::DiskReserve { reserve_bytes, free_bytes } => {
            assert_eq!(*reserve_bytes, reserve.bytes);
            assert!(free_bytes < reserve_bytes);
            *free_bytes
        }
        other => panic!("stopped for the reserve, not {other:?}"),
    };
    assert!(stopped.error().unwrap().starts_with("killed to keep the node's disk reserve: "), "{stopped:?}");
    let left = quiet.wait().await;
    assert!(left.succeeded(), "{left:?}");
    assert_eq!(left.stdout_tail, "hello\nstill here\n");
    // The writer's files were given back (other builds share this disk: compare loosely).
    let now_free = FsSpace::of(dir.path()).unwrap().free_bytes;
    assert!(now_free > free_at_stop + (32 << 20), "{now_free} free now, {free_at_stop} at the stop");
    assert_eq!(files_in(&writer.workdir), ["stderr.log", "stdout.log"]);
}
