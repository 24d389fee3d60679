//! The `falak` binary end to end: its exit codes and output against an API served by a small
//! scripted fake node, and its errors when no node answers.

#![allow(clippy::disallowed_methods, reason = "tests measure and bound real time")]

mod admission;
mod code;
mod containers;
mod disk;
mod failover;
mod functions;
mod history;
mod images;
mod isolation;
mod no_namespaces;
mod partition;
mod prefetch;
mod procs;
mod rollout;
mod up;

use std::collections::BTreeMap;
use std::process::Output;

use falak_api::job::{JobInfo, TaskCounts};
use falak_api::node::{NodeInfo, NodeRef};
use falak_api::task::TaskInfo;
use falak_api::{Action, ApiConfig, ApiError};
use falak_core::NodeId;
use falak_core::job::{Delivery, JobId, JobState, TaskId, TaskInputs, TaskState, WorkKind};
use falak_core::placement::Health;
use falak_core::resources::Resources;
use tokio::sync::mpsc;

/// Run the binary in an empty directory, with a config dir of its own (so no mesh is found by
/// accident: no `.falak/mesh.json`, no current mesh).
async fn falak(args: &[&str], dir: &std::path::Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_falak"))
        .args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("FALAK_MESH")
        .env_remove("FALAK_API")
        // The token the fake nodes accept.
        .env("FALAK_TOKEN", falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin).1)
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A URL where nothing listens.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[tokio::test]
async fn an_unreachable_api_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = closed_url();
    let out = falak(&["nodes", "--api", &url], dir.path()).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), format!("error: cannot reach falak at {url}: is a node running? (`falak up`)\n"));
}

#[tokio::test]
async fn the_mesh_file_names_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let url = closed_url();
    std::fs::create_dir(dir.path().join(".falak")).unwrap();
    let mesh = serde_json::json!({ "name": "local", "nodes": [{ "name": "n1", "pid": 1, "api_url": url }], "join_token": "x" });
    std::fs::write(dir.path().join(".falak/mesh.json"), mesh.to_string()).unwrap();
    let out = falak(&["job", "list"], dir.path()).await;
    assert!(text(&out.stderr).contains(&format!("cannot reach falak at {url}")), "{}", text(&out.stderr));
}

#[tokio::test]
async fn bad_arguments_exit_2_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = falak(&["job", "status", "nope"], dir.path()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not a job id"), "{}", text(&out.stderr));
}

/// A fake node that answers the few actions these tests use, with a job that runs for three
/// polls and then ends `final_state`.
fn spawn_fake(final_state: JobState) -> String {
    let (tx, mut rx) = mpsc::channel::<Action>(16);
    tokio::spawn(async move {
        let mut polls = 0;
        while let Some(action) = rx.recv().await {
            match action {
                Action::ListNodes { reply } => {
                    let _ = reply.send(Ok(vec![node()]));
                }
                Action::SubmitJob { request, reply, .. } => {
                    assert_eq!(request.tasks, TaskInputs::Count(2));
                    assert_eq!(request.max_attempts, Some(2));
                    let _ = reply.send(Ok(job(JobState::Running)));
                }
                Action::GetJob { reply, .. } => {
                    polls += 1;
                    let state = if polls < 3 { JobState::Running } else { final_state };
                    let _ = reply.send(Ok(job(state)));
                }
                Action::JobTasks { reply, .. } => {
                    let failed = final_state == JobState::Failed;
                    let _ = reply.send(Ok(vec![task(0, false), task(1, failed)]));
                }
                other => other.fail(ApiError::internal("not scripted in this fake")),
            }
        }
    });
    let (auth, _) = falak_api::auth::one_token_for_tests(falak_core::access::Role::Admin);
    let router = falak_api::router(tx, ApiConfig::default(), auth);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, router).await.unwrap();
    });
    url
}

fn node() -> NodeInfo {
    NodeInfo {
        id: NodeId([1; 32]),
        name: "node-1".into(),
        state: Health::Healthy,
        labels: BTreeMap::new(),
        capacity: Resources::new(2000, 4 << 30),
        free_cpu_millis: 1500,
        free_memory_bytes: 3 << 30,
        running: 1,
        queued: 0,
        voter: true,
        leader: true,
        rtt_ms: None,
        api_url: "http://127.0.0.1:7070".into(),
        cost_per_hour: 0.0,
        namespaces: Some(falak_core::node::Namespaces::User),
    }
}

fn job(state: JobState) -> JobInfo {
    let done = state != JobState::Running;
    let counts = match state {
        JobState::Running => TaskCounts { running: 2, ..TaskCounts::default() },
        JobState::Failed => TaskCounts { completed: 1, failed: 1, ..TaskCounts::default() },
        _ => TaskCounts { completed: 2, ..TaskCounts::default() },
    };
    JobInfo {
        id: JobId(1),
        kind: WorkKind::Batch,
        name: "hello".into(),
        capsule: "hello".into(),
        version: 1,
        state,
        tasks: 2,
        counts,
        max_attempts: 2,
        timeout_ms: None,
        delivery: Delivery::AtLeastOnce,
        resources: Resources::new(100, 32 << 20),
        origin: NodeId([1; 32]),
        created_at: 1_000,
        finished_at: done.then_some(1_800),
        duration_ms: done.then_some(800),
    }
}

fn task(index: u32, failed: bool) -> TaskInfo {
    TaskInfo {
        id: TaskId { job: JobId(1), index },
        job: JobId(1),
        index,
        input: None,
        state: if failed { TaskState::Failed } else { TaskState::Completed },
        attempt: if failed { 2 } else { 1 },
        node: Some(NodeRef { id: NodeId([1; 32]), name: "node-1".into() }),
        exit_code: Some(if failed { 3 } else { 0 }),
        error: None,
        duration_ms: Some(5),
        stdout_tail: format!("task {index}\n"),
        stderr_tail: String::new(),
        updated_at: 1_800,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_prints_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let url = spawn_fake(JobState::Completed);
    let out =
        falak(&["--api", &url, "job", "submit", "hello", "--tasks", "2", "--retries", "1", "--wait"], dir.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "task 0\ntask 1\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("submitted job j1: 2 tasks of hello v1"), "{stderr}");
    assert!(stderr.contains("job j1 COMPLETED in 800ms: 2 completed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_fails_when_the_job_failed() {
    let dir = tempfile::tempdir().unwrap();
    let url = spawn_fake(JobState::Failed);
    let out =
        falak(&["--api", &url, "job", "submit", "hello", "--tasks", "2", "--retries", "1", "--wait"], dir.path()).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "task 0\ntask 1\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("task j1-t1 failed on node-1 after 2 attempts: exit code 3"), "{stderr}");
    assert!(stderr.ends_with("error: job j1 FAILED: 1 of 2 tasks failed (see `falak job status j1`)\n"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_as_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let url = spawn_fake(JobState::Completed);
    let out = falak(&["--api", &url, "nodes"], dir.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME    STATE    ROLE"), "{table}");
    assert!(table.contains("node-1  HEALTHY  leader  user        1.5/2"), "{table}");

    let out = falak(&["--api", &url, "nodes", "-o", "json"], dir.path()).await;
    let nodes: Vec<NodeInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes, [node()]);

    // An action the fake does not script comes back as the API's error.
    let out = falak(&["--api", &url, "capsule", "list"], dir.path()).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "error: not scripted in this fake\n");
}
