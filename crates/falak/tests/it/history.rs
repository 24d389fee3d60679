//! Issue 9's client-facing promises with real node processes: a submit retried with the same
//! idempotency key through another node, while the first attempt's commit is delayed, yields
//! one job; and a reader that follows the event stream through two node restarts and a switch
//! of node, resuming with `Last-Event-ID`, sees every ledger event exactly once, in index order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use falak_api::event::{EventRecord, EventSource};
use falak_api::job::JobSubmission;
use falak_api::{Client, ClientError, ErrorCode, EventItem};
use falak_core::job::{JobId, JobState};
use falak_core::ledger::EventId;
use futures_util::StreamExt;

use crate::failover::wait_job;
use crate::procs::{HELLO, Mesh};

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

/// The node indexes of the ledger's voters and of its leader, once `voters` vote.
async fn roles(mesh: &Mesh, voters: usize) -> (usize, Vec<usize>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(nodes) = mesh.nodes[0].client.nodes().await {
            let voting: Vec<usize> = nodes.iter().filter(|n| n.voter).filter_map(|n| mesh.index_of(n.id)).collect();
            let leader = nodes.iter().find(|n| n.leader).and_then(|n| mesh.index_of(n.id));
            if let Some(leader) = leader
                && voting.len() == voters
                && voting.contains(&leader)
            {
                return (leader, voting);
            }
        }
        assert!(Instant::now() < deadline, "the ledger never settled on {voters} voters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_retried_through_another_node_while_its_commit_is_delayed_yields_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 5);
    mesh.wait_ready(Duration::from_secs(60)).await;
    mesh.nodes[0].client.apply_capsule_text(HELLO).await.unwrap();
    let (leader, voters) = roles(&mesh, 3).await;
    let paused: Vec<usize> = voters.iter().copied().filter(|v| *v != leader).collect();
    let learners: Vec<usize> = (0..5).filter(|i| !voters.contains(i)).collect();
    let key: falak_core::ledger::IdempotencyKey = "issue-9-delayed-submit".parse().unwrap();
    let through = |i: usize| mesh.nodes[i].client.clone().with_idempotency_key(Some(key.clone()));
    let submission = JobSubmission { capsule: "hello".into(), tasks: Some(3), ..JobSubmission::default() };

    // The leader's fellow voters stop: it can append the submit, not commit it.
    for &v in &paused {
        mesh.signal(v, libc::SIGSTOP);
    }
    let first = through(learners[0]).submit_job(&submission).await;
    match &first {
        Err(ClientError::Api { code: ErrorCode::Unavailable, message, .. }) => {
            assert!(message.contains(key.as_str()), "the 503 names the key to retry with: {message}");
        }
        other => panic!("a submit that cannot commit is answered 503, got {other:?}"),
    }
    // Retried through another node while the first attempt is still pending...
    let retry = tokio::spawn({
        let client = through(learners[1]);
        let submission = submission.clone();
        async move { client.submit_job(&submission).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and then the voters come back, one first: it cannot win an election against the
    // leader's longer log, so the leader is re-elected and commits what it appended.
    mesh.signal(paused[0], libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.signal(paused[1], libc::SIGCONT);
    let mut answer = retry.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = &answer {
        assert!(e.is_retryable() && Instant::now() < deadline, "the retry failed for good: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = through(learners[1]).submit_job(&submission).await;
    }
    let job = answer.unwrap();
    // Once more, through a third node: the same job again.
    let again = through(leader).submit_job(&submission).await.expect("a repeat is answered");
    assert_eq!(again.id, job.id);
    let jobs = mesh.nodes[leader].client.jobs(None).await.unwrap();
    let hello: Vec<JobId> = jobs.iter().filter(|j| j.capsule == "hello").map(|j| j.id).collect();
    assert_eq!(hello, [job.id], "exactly one job, whatever committed first");
    // The first attempt's commit was only delayed: once the leader was re-elected it committed,
    // and every retry was answered with its outcome.
    assert_eq!(job.origin, mesh.nodes[learners[0]].id, "the job is the first, delayed attempt's");
    // The same key for another request is refused, and changes nothing.
    let other = JobSubmission { tasks: Some(4), ..submission };
    let refused = through(learners[0]).submit_job(&other).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Conflict), "{refused}");
    assert_eq!(mesh.nodes[leader].client.jobs(None).await.unwrap().len(), jobs.len());
    let done = wait_job(&mesh.nodes[leader].client, job.id, Duration::from_secs(90)).await;
    assert_eq!(done.state, JobState::Completed);
}

/// Tasks that run long enough for restarts to land while the job runs.
const NAP: &str = r#"name: nap
kind: process
command: ["/bin/sh", "-c", "sleep 0.3; echo done $FALAK_TASK_INDEX"]
resources: { cpu: 100m, memory: 16Mi }
placement: { strategy: balanced, max_attempts: 5 }
"#;

const TASKS: u32 = 500;

/// Follow `client`'s events after `last`, appending ledger events to `seen`, until `enough`
/// holds (true) or the stream ends or fails (false: the node went away).
async fn follow_until(
    client: &Client,
    last: &mut Option<EventId>,
    seen: &mut Vec<EventRecord>,
    enough: impl Fn(&[EventRecord]) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let Ok(stream) = client.events(true, *last).await else { return false };
    let mut stream = std::pin::pin!(stream);
    while !enough(seen) {
        assert!(Instant::now() < deadline, "the events stopped coming; {} seen", seen.len());
        let item = match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(item))) => item,
            Ok(Some(Err(_)) | None) | Err(_) => return false,
        };
        match item {
            EventItem::Event(record) if record.source == EventSource::Ledger => {
                *last = record.id;
                seen.push(record);
            }
            EventItem::Event(_) => {}
            EventItem::Gap { resumes_at } => panic!("a gap in the history before index {resumes_at}"),
            EventItem::Lagged { .. } => {}
        }
    }
    true
}

fn finished(job: JobId) -> impl Fn(&[EventRecord]) -> bool {
    move |seen| seen.iter().any(|e| e.kind == "job_finished" && e.data["job"] == serde_json::json!(job.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_one_history_through_restarts_and_a_switch_of_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(60)).await;
    mesh.nodes[1].client.apply_capsule_text(NAP).await.unwrap();
    // Start where node 0's history ends now.
    let before: Vec<EventItem> =
        mesh.nodes[0].client.events(false, None).await.unwrap().map(|i| i.unwrap()).collect().await;
    let mut last = before.iter().rev().find_map(|i| match i {
        EventItem::Event(e) => e.id,
        _ => None,
    });
    let start = last;
    let mut seen = Vec::new();

    let submission = JobSubmission { capsule: "nap".into(), tasks: Some(TASKS), ..JobSubmission::default() };
    let job = mesh.nodes[1].client.submit_job(&submission).await.unwrap().id;
    let done = finished(job);

    // 1. Node 0 is killed mid-job (kill -9) and restarted; the reader resumes there.
    let reader = mesh.nodes[0].client.clone();
    assert!(follow_until(&reader, &mut last, &mut seen, |s| s.len() >= 300).await, "events while the job starts");
    let orphans = mesh.task_groups(0);
    mesh.kill9(0);
    falak_bench::mesh::kill_groups(&orphans);
    let cut_at = seen.len();
    mesh.spawn(0);
    mesh.wait_ready(Duration::from_secs(60)).await;
    // 2. Then stopped cleanly and restarted.
    let moved_on = |s: &[EventRecord]| s.len() >= cut_at + 300 || done(s);
    assert!(follow_until(&reader, &mut last, &mut seen, moved_on).await, "resumed after the kill");
    mesh.stop(0);
    let stopped_at = seen.len();
    mesh.spawn(0);
    mesh.wait_ready(Duration::from_secs(60)).await;
    let moved_on = |s: &[EventRecord]| s.len() >= stopped_at + 200 || done(s);
    assert!(follow_until(&reader, &mut last, &mut seen, moved_on).await, "resumed after the restart");
    // 3. The reader moves to node 2 and reads to the end of the job there.
    assert!(follow_until(&mesh.nodes[2].client, &mut last, &mut seen, &done).await, "read to the end on node 2");

    // Every event once, in index order...
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id), "ids strictly increase along what the reader saw");
    // ...and exactly node 1's history over the same span.
    let reference: Vec<EventRecord> = mesh.nodes[1]
        .client
        .events(false, start)
        .await
        .unwrap()
        .filter_map(|i| async move {
            match i.unwrap() {
                EventItem::Event(e) if e.source == EventSource::Ledger => Some(e),
                _ => None,
            }
        })
        .collect()
        .await;
    let end = seen.last().and_then(|e| e.id).unwrap();
    let reference: Vec<EventRecord> = reference.into_iter().filter(|e| e.id.is_some_and(|id| id <= end)).collect();
    assert_eq!(seen.len(), reference.len(), "the reader saw as many ledger events as node 1 holds");
    assert!(seen == reference, "the reader saw node 1's history, event for event");
    // The job's own story in it: submitted once, each task completed once, finished once.
    let job_text = serde_json::json!(job.to_string());
    let count = |kind: &str| seen.iter().filter(|e| e.kind == kind && e.data["job"] == job_text).count();
    assert_eq!((count("job_submitted"), count("job_finished")), (1, 1));
    let mut completed: BTreeMap<String, usize> = BTreeMap::new();
    for e in seen.iter().filter(|e| e.kind == "task_state" && e.data["state"] == "COMPLETED") {
        let task = e.data["task"].as_str().unwrap_or_default();
        if task.starts_with(&format!("{job}-")) {
            *completed.entry(task.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(completed.len(), TASKS as usize, "every task completed");
    assert!(completed.values().all(|n| *n == 1), "no task completed twice");
    assert_eq!(wait_job(&mesh.nodes[2].client, job, Duration::from_secs(90)).await.state, JobState::Completed);
}
