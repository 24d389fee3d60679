//! Every route's happy path through the typed client.

use falak_api::job::JobSubmission;
use falak_api::service::ServiceSubmission;
use falak_api::task::LogStream;
use falak_api::workload::{WorkloadKind, WorkloadRequest};
use falak_core::capsule::CapsuleDocument;
use falak_core::job::{Delivery, JobId, JobState, TaskId, TaskState, WorkKind};
use falak_core::placement::Health;

use crate::fake_node::{Harness, spawn};

pub const HELLO: &str = r#"
name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX"]
resources: { cpu: 500m, memory: 32Mi }
"#;

/// A harness with capsule `hello` applied.
async fn with_hello() -> Harness {
    let h = spawn().await;
    let applied = h.client.apply_capsule_text(HELLO).await.unwrap();
    assert_eq!((applied.name.as_str(), applied.version, applied.unchanged), ("hello", 1, false));
    h
}

fn task(job: JobId, index: u32) -> TaskId {
    TaskId { job, index }
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let h = spawn().await;
    assert_eq!(h.client.health().await.unwrap(), "ok");
    let ready = h.client.ready().await.unwrap();
    assert!(ready.ready);
    assert_eq!(ready.leader, Some(h.fake().me));
    assert!(h.client.metrics().await.unwrap().contains("falak_up 1"));
    let response = h.raw().get(format!("{}/metrics", h.base)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
}

#[tokio::test]
async fn nodes_list_with_capacity_and_roles() {
    let h = spawn().await;
    let nodes = h.client.nodes().await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    let a = &nodes[0];
    assert_eq!(a.state, Health::Healthy);
    assert_eq!((a.capacity.cpu_millis, a.free_cpu_millis), (4000, 4000));
    assert!(a.leader && a.voter);
    assert_eq!(a.labels["zone"], "a");
    assert_eq!(a.rtt_ms, Some(0.25));
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["state"], "HEALTHY");
    assert_eq!(json["capacity"], serde_json::json!({ "cpu_millis": 4000, "memory_bytes": 8u64 << 30, "gpus": 0 }));
}

#[tokio::test]
async fn capsules_apply_list_show() {
    let h = with_hello().await;
    // The same document again changes nothing and answers 200.
    let again = h.client.apply_capsule_text(HELLO).await.unwrap();
    assert!(again.unchanged);
    let raw = h
        .raw()
        .post(format!("{}/api/v1/capsules", h.base))
        .header("content-type", "text/yaml")
        .header(falak_core::signing::SIGNATURE_HEADER, {
            let spec = CapsuleDocument::parse(HELLO).unwrap().signed_form();
            falak_core::signing::deployer_for_tests().0.sign(falak_core::signing::SpecKind::Capsule, &spec).encode()
        })
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    // A JSON document with a change makes version 2 (201).
    let mut doc: CapsuleDocument = falak_core::spec::from_yaml(HELLO).unwrap();
    doc.command = vec!["/bin/true".into()];
    let applied = h.client.apply_capsule(&doc).await.unwrap();
    assert_eq!((applied.version, applied.unchanged), (2, false));

    let list = h.client.capsules().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].latest_version, list[0].versions), ("hello", 2, 2));
    let show = h.client.capsule("hello").await.unwrap();
    let versions: Vec<u32> = show.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(show.versions[1].spec.command, ["/bin/true"]);
}

#[tokio::test]
async fn jobs_submit_list_show_tasks_result() {
    let h = with_hello().await;
    let job = h
        .client
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(3), ..Default::default() })
        .await
        .unwrap();
    assert_eq!((job.kind, job.state, job.tasks, job.counts.queued), (WorkKind::Batch, JobState::Running, 3, 3));
    let inputs = JobSubmission {
        capsule: "hello".into(),
        inputs: Some(vec!["a".into(), "b".into()]),
        retries: Some(2),
        timeout: Some("30s".into()),
        delivery: Some(Delivery::AtMostOnce),
        ..Default::default()
    };
    let second = h.client.submit_job(&inputs).await.unwrap();
    assert_eq!((second.max_attempts, second.timeout_ms, second.delivery), (3, Some(30_000), Delivery::AtMostOnce));

    let listed: Vec<JobId> = h.client.jobs(None).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, [second.id, job.id], "newest first");
    assert_eq!(h.client.jobs(Some(1)).await.unwrap().len(), 1);

    {
        let mut fake = h.fake();
        fake.run(task(job.id, 0), 0, "task 0\n");
        fake.run(task(job.id, 1), 0, "task 1");
        fake.elect_and_start(task(job.id, 2));
    }
    let status = h.client.job(job.id).await.unwrap();
    assert_eq!((status.counts.completed, status.counts.running, status.state), (2, 1, JobState::Running));
    assert_eq!(status.duration_ms, None);

    let tasks = h.client.job_tasks(job.id).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|t| t.state).collect();
    assert_eq!(states, [TaskState::Completed, TaskState::Completed, TaskState::Running]);
    assert_eq!(tasks[0].exit_code, Some(0));
    assert_eq!(tasks[0].node.as_ref().unwrap().name, "node-a");

    assert_eq!(h.client.job_result_text(job.id).await.unwrap(), "task 0\ntask 1\n");
    let result = h.client.job_result(job.id).await.unwrap();
    assert_eq!(result.len(), 3);
    assert_eq!((result[1].output.as_str(), result[2].state), ("task 1", TaskState::Running));

    let inputs_tasks = h.client.job_tasks(second.id).await.unwrap();
    assert_eq!(inputs_tasks[1].input.as_deref(), Some("b"));

    let cancelled = h.client.cancel_job(job.id).await.unwrap();
    assert_eq!((cancelled.state, cancelled.counts.cancelled), (JobState::Cancelled, 1));
    assert!(cancelled.duration_ms.is_some());
}

#[tokio::test]
async fn tasks_show_logs_and_decision() {
    let h = with_hello().await;
    let submission = JobSubmission { capsule: "hello".into(), tasks: Some(2), retries: Some(0), ..Default::default() };
    let job = h.client.submit_job(&submission).await.unwrap();
    let t0 = task(job.id, 0);
    h.fake().run(t0, 3, "out");

    let info = h.client.task(t0).await.unwrap();
    assert_eq!((info.state, info.exit_code, info.attempt), (TaskState::Failed, Some(3), 1));
    assert_eq!(info.stderr_tail, format!("stderr of {t0}\n"));
    assert_eq!(h.client.task_logs(t0, LogStream::Stderr, None).await.unwrap(), format!("stderr of {t0} on node-a\n"));
    assert_eq!(h.client.task_logs(t0, LogStream::Stdout, Some(8)).await.unwrap(), " node-a\n");

    // Recorded: node-a won; node-b lost on gravity with the terms that made it lose.
    let recorded = h.client.decision(t0).await.unwrap();
    assert!(!recorded.live);
    assert_eq!(recorded.winner.as_ref().unwrap().name, "node-a");
    assert_eq!(recorded.candidates.len(), 2);
    let loser = recorded.candidates.iter().find(|c| c.name == "node-b").unwrap();
    assert!(loser.fits && !loser.winner);
    let why = loser.why_not.as_deref().unwrap();
    assert!(why.contains("for node-a") && why.contains("lower"), "{why}");
    let term = &loser.terms[0];
    assert!((term.contribution - term.value * term.weight).abs() < 1e-6);

    // Live: the second task is still queued, so explain computes what placement would do now.
    let live = h.client.decision(task(job.id, 1)).await.unwrap();
    assert!(live.live && live.winner.is_none());
    assert!(live.summary.contains("node-a ranks first"), "{}", live.summary);
}

#[tokio::test]
async fn decision_explains_a_task_nobody_can_fit() {
    let h = spawn().await;
    let huge = "name: huge\nkind: process\ncommand: [x]\nresources: { cpu: 64, memory: 1Mi }\n";
    h.client.apply_capsule_text(huge).await.unwrap();
    let job = h.client.submit_job(&JobSubmission { capsule: "huge".into(), ..Default::default() }).await.unwrap();
    let decision = h.client.decision(task(job.id, 0)).await.unwrap();
    assert!(decision.live);
    assert!(decision.summary.starts_with("no node fits"), "{}", decision.summary);
    for candidate in &decision.candidates {
        assert!(!candidate.fits);
        assert!(candidate.reason.as_deref().unwrap().contains("millicores"), "{:?}", candidate.reason);
        assert!(candidate.why_not.as_deref().unwrap().starts_with("does not fit"));
    }
}

#[tokio::test]
async fn services_apply_list_show_remove() {
    let h = with_hello().await;
    let created = h
        .client
        .apply_service(&ServiceSubmission { name: "web".into(), capsule: "hello".into(), version: None, replicas: 2 })
        .await
        .unwrap();
    assert_eq!((created.replicas, created.running, created.tasks.len()), (2, 0, 2));
    h.fake().elect_and_start(created.tasks[0].id);

    let scaled = h.client.apply_service_text("name: web\ncapsule: hello\nreplicas: 3\n").await.unwrap();
    assert_eq!((scaled.replicas, scaled.running), (3, 1));
    let listed = h.client.services().await.unwrap();
    assert_eq!(listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["web"]);
    assert_eq!(h.client.service("web").await.unwrap().job, created.job);

    let removed = h.client.remove_service("web").await.unwrap();
    assert_eq!(removed.state, JobState::Cancelled);
    assert!(h.client.services().await.unwrap().is_empty());
}

#[tokio::test]
async fn workloads_alias_services_and_jobs() {
    let h = with_hello().await;
    let job = h.client.submit_job(&JobSubmission { capsule: "hello".into(), ..Default::default() }).await.unwrap();
    let request = WorkloadRequest {
        name: "api".into(),
        namespace: Some("default".into()),
        image: Some("hello:1".into()),
        replicas: Some(2),
        ..Default::default()
    };
    let created = h.client.create_workload(&request).await.unwrap();
    assert_eq!((created.kind, created.replicas, created.status.as_str()), (WorkloadKind::Service, 2, "pending"));
    assert_eq!((created.resources.cpu.as_str(), created.resources.memory.as_str()), ("500m", "32Mi"));
    assert_eq!(created.image, "hello:1");
    assert_eq!(created.namespace, "default");

    let all = h.client.workloads().await.unwrap();
    let kinds: Vec<(String, WorkloadKind)> = all.iter().map(|w| (w.id.clone(), w.kind)).collect();
    assert_eq!(kinds, [(created.id.clone(), WorkloadKind::Service), (job.id.to_string(), WorkloadKind::Job)]);
    assert_eq!(h.client.workload("api").await.unwrap().id, created.id);
    assert_eq!(h.client.workload(&job.id.to_string()).await.unwrap().status, "running");

    assert_eq!(h.client.delete_workload(&created.id).await.unwrap().status, "removed");
    assert_eq!(h.client.delete_workload(&job.id.to_string()).await.unwrap().status, "cancelled");
    assert_eq!(h.client.workload(&job.id.to_string()).await.unwrap().status, "cancelled");
}

#[tokio::test]
async fn a_retried_task_shows_why_until_it_completes() {
    let h = with_hello().await;
    let job = h
        .client
        .submit_job(&JobSubmission { capsule: "hello".into(), retries: Some(1), ..Default::default() })
        .await
        .unwrap();
    let t0 = task(job.id, 0);
    h.fake().run(t0, 3, "first");
    let retrying = h.client.task(t0).await.unwrap();
    assert_eq!((retrying.state, retrying.attempt), (TaskState::Retrying, 2));
    assert_eq!(retrying.error.as_deref(), Some("exited with Some(3)"));
    assert!(h.client.decision(t0).await.unwrap().live, "a retrying task is explained live");
    h.fake().run(t0, 0, "second");
    let done = h.client.task(t0).await.unwrap();
    assert_eq!((done.state, done.error, done.stdout_tail.as_str()), (TaskState::Completed, None, "second"));
    assert!(!h.client.decision(t0).await.unwrap().live);
}
