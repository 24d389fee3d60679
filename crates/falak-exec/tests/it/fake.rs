//! The recording fake, under paused time.

use std::time::Duration;

use falak_exec::fake::{Call, RecordingExecutor, Script};
use falak_exec::{Executor, ExitReason, StartError, Stream, TaskSpec};

fn spec(task_id: &str, attempt: u32) -> TaskSpec {
    TaskSpec::new(task_id, attempt, vec!["work".into()], format!("/data/tasks/{task_id}/{attempt}"))
}

#[tokio::test(start_paused = true)]
async fn scripted_exits_take_their_scripted_time() {
    let fake = RecordingExecutor::new();
    fake.script("j1-t0", Script::exit(0, Duration::from_secs(1800)).with_stdout("done\n"));
    let spec = spec("j1-t0", 1);
    fake.prepare(&spec).await.unwrap();
    let running = fake.start(spec.clone()).await.unwrap();
    assert_eq!(fake.running(), vec![("j1-t0".to_owned(), 1)]);
    let exit = running.wait().await;
    assert!(exit.succeeded());
    assert_eq!(exit.duration, Duration::from_secs(1800));
    assert_eq!(exit.stdout_tail, "done\n");
    assert!(fake.running().is_empty());
    assert_eq!(fake.calls(), vec![Call::Prepare { task_id: "j1-t0".into(), attempt: 1 }, Call::Start(spec)]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_before_the_scripted_end_wins() {
    let fake = RecordingExecutor::new();
    fake.set_default(Script::exit(0, Duration::from_secs(60)));
    let mut spec = spec("j1-t0", 1);
    spec.timeout = Some(Duration::from_secs(10));
    let exit = fake.start(spec).await.unwrap().wait().await;
    assert_eq!((exit.reason, exit.duration), (ExitReason::TimedOut(Duration::from_secs(10)), Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn stop_ends_a_hanging_task_and_is_recorded() {
    let fake = RecordingExecutor::new();
    fake.script("j1-t0", Script::hang());
    let running = fake.start(spec("j1-t0", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(running.stats().await.elapsed, Duration::from_secs(5));
    let exit = running.stop(Duration::from_secs(2)).await;
    assert_eq!((exit.reason, exit.duration), (ExitReason::Stopped, Duration::from_secs(5)));
    assert!(fake.calls().contains(&Call::Stop { task_id: "j1-t0".into(), attempt: 1, grace: Duration::from_secs(2) }));
    assert!(fake.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scripts_queue_per_attempt_and_fail_as_told() {
    let fake = RecordingExecutor::new();
    fake.script("j1-t0", Script::fail_prepare("artifact missing"));
    fake.script("j1-t0", Script::fail_start("runc exploded"));
    fake.script("j1-t0", Script::exit(2, Duration::from_secs(1)));

    let prepare = fake.prepare(&spec("j1-t0", 1)).await.unwrap_err();
    assert_eq!(prepare.to_string(), "cannot prepare task j1-t0: artifact missing");
    let start = fake.start(spec("j1-t0", 2)).await.unwrap_err();
    assert!(matches!(start, StartError::Backend { .. }), "{start:?}");
    assert_eq!(fake.start(spec("j1-t0", 3)).await.unwrap().wait().await.code, Some(2));
    assert!(fake.start(spec("j1-t0", 4)).await.unwrap().wait().await.succeeded(), "then the default");
    assert_eq!(fake.started().iter().map(|s| s.attempt).collect::<Vec<_>>(), vec![2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn logs_serve_the_scripted_output() {
    let fake = RecordingExecutor::new();
    fake.script("j1-t0", Script::exit(1, Duration::ZERO).with_stderr("boom: bad input\n"));
    let spec = spec("j1-t0", 1);
    fake.start(spec.clone()).await.unwrap().wait().await;
    let chunk = fake.read_log(&spec.workdir, Stream::Stderr, Some(6), 3).await.unwrap();
    assert_eq!((chunk.data.as_slice(), chunk.next_offset, chunk.size), (&b"bad"[..], 9, 16));
    assert!(fake.read_log("/elsewhere".as_ref(), Stream::Stdout, None, 10).await.is_err());
}
