//! Services and bad input against a real daemon (one node on loopback).

use std::time::Duration;

use falak_api::job::JobSubmission;
use falak_api::service::ServiceSubmission;
use falak_api::{Client, ErrorCode};
use falak_core::job::{JobState, TaskState};

use crate::daemon::{CAPSULE, InProcessMesh};

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 30 s");
}

const SERVER: &str = r#"name: server
kind: process
command: ["/bin/sh", "-c", "echo replica $FALAK_TASK_INDEX; exec sleep 60"]
resources: { cpu: 100m, memory: 16Mi }
"#;

const FLAKY: &str = r#"name: flaky
kind: process
command: ["/bin/sh", "-c", "sleep 0.2; exit 3"]
resources: { cpu: 100m, memory: 16Mi }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_keeps_its_replicas_running_scales_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let c = &mesh.clients[0];
    c.apply_capsule_text(SERVER).await.unwrap();
    c.apply_capsule_text(FLAKY).await.unwrap();
    let apply = |name: &str, capsule: &str, replicas: u32| ServiceSubmission {
        name: name.into(),
        capsule: capsule.into(),
        version: None,
        replicas,
    };
    c.apply_service(&apply("web", "server", 3)).await.unwrap();
    eventually("3 replicas running", async || (c.service("web").await.ok()?.running == 3).then_some(())).await;
    // Scale down: the extra replicas are cancelled and dropped (their processes stopped).
    c.apply_service(&apply("web", "server", 1)).await.unwrap();
    let web = eventually("scaled to 1", async || {
        let s = c.service("web").await.ok()?;
        let all = c.job_tasks(s.job).await.ok()?;
        (s.running == 1 && all.len() == 1 && all[0].state == TaskState::Running).then_some(s)
    })
    .await;
    assert_eq!(web.replicas, 1);
    // Listed as a workload in seed 003's shape.
    let workloads = c.workloads().await.unwrap();
    assert!(workloads.iter().any(|w| serde_json::to_value(w).unwrap().to_string().contains("web")), "{workloads:?}");
    // A replica that exits is restarted (a new attempt), again and again, with backoff: attempt
    // 5 opens at the fourth exit, after four runs of 0.2 s and waits of 0.25 + 0.5 + 1 s.
    let started = std::time::Instant::now();
    c.apply_service(&apply("crashy", "flaky", 1)).await.unwrap();
    eventually("the crashing replica exited four times", async || {
        let s = c.service("crashy").await.ok()?;
        (s.tasks[0].attempt >= 5).then_some(())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(2_300), "restarts back off: {:?}", started.elapsed());
    // Removing a service cancels its replicas.
    let removed = c.remove_service("web").await.unwrap();
    assert_eq!(removed.state, JobState::Cancelled);
    let error = c.service("nope").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    mesh.stop().await;
}

/// POST a body by hand, so that a server answering before reading it all (413) is seen rather
/// than reported as a broken pipe.
async fn post_raw(client: &Client, ca: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = client.base_url().trim_start_matches("https://").trim_end_matches('/').to_owned();
    let mut stream = crate::daemon::tls_connect(&addr, ca).await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/yaml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        client.token().unwrap_or_default(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn post(client: &Client, path: &str, content_type: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let response = client
        .http()
        .post(format!("{}{path}", client.base_url()))
        .bearer_auth(client.token().unwrap_or_default())
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_leaves_the_node_working() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let c = &mesh.clients[0];
    let yaml = "application/yaml";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed YAML", "name: \"unterminated\nkind: process\n".into(), 400, "line"),
        (
            "unknown field",
            CAPSULE.replace("kind: process", "kind: process\ncolour: blue"),
            400,
            "unknown field `colour`",
        ),
        ("negative cpu", CAPSULE.replace("cpu: 100m", "cpu: -1"), 400, "resources.cpu"),
        ("absurd memory", CAPSULE.replace("memory: 32Mi", "memory: 999999Ti"), 400, "resources.memory"),
        ("bad name", CAPSULE.replace("name: hello", "name: Hello World"), 400, "name"),
    ];
    for (what, body, status, needle) in cases {
        let (got, error) = post(c, "/api/v1/capsules", yaml, body.into_bytes()).await;
        assert_eq!(got, status, "{what}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default().to_lowercase();
        assert!(message.contains(&needle.to_lowercase()), "{what}: {message}");
    }
    // A 10 MB body is refused before it is parsed.
    let answer = post_raw(c, &mesh.ca, "/api/v1/capsules", &vec![b'a'; 10 << 20]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(answer.contains("too_large"), "{answer:.300}");

    // A version is immutable: the same explicit version with another spec is a conflict.
    let v1 = CAPSULE.replace("name: hello", "name: hello\nversion: 1");
    c.apply_capsule_text(&v1).await.unwrap();
    let changed = v1.replace("echo task", "echo job");
    let error = c.apply_capsule_text(&changed).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict), "{error}");
    assert!(c.apply_capsule_text(&v1).await.unwrap().unchanged, "re-applying the same version is a no-op");

    // An unknown capsule.
    let submit = |capsule: &str| JobSubmission { capsule: capsule.into(), tasks: Some(2), ..JobSubmission::default() };
    let error = c.submit_job(&submit("nope")).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(error.to_string().contains("nope"), "{error}");

    // A job no node can fit stays QUEUED, and explain says why.
    let huge = CAPSULE.replace("name: hello", "name: huge").replace("memory: 32Mi", "memory: 512Gi");
    c.apply_capsule_text(&huge).await.unwrap();
    let job = c.submit_job(&submit("huge")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = c.job(job.id).await.unwrap();
    assert_eq!(info.state, JobState::Running);
    assert_eq!(info.counts.queued, 2, "{info:?}");
    let task = c.job_tasks(job.id).await.unwrap()[0].id;
    let decision = serde_json::to_string(&c.decision(task).await.unwrap()).unwrap();
    assert!(decision.contains("memory"), "explain names the missing resource: {decision}");

    // The node is unaffected: it still runs work.
    let ok = c.submit_job(&submit("hello")).await.unwrap();
    let done = eventually("the job completes", async || {
        let j = c.job(ok.id).await.ok()?;
        (j.state != JobState::Running).then_some(j)
    })
    .await;
    assert_eq!(done.state, JobState::Completed);
    mesh.stop().await;
}

/// A task that sleeps as `sleep 30.<this test process's pid>`, so the test finds its process
/// by its command line: a pid the task could write down would be its pid namespace's.
fn sleeper() -> (String, String) {
    let duration = format!("30.{}", std::process::id());
    let capsule = format!(
        "name: sleeper\nkind: process\ncommand: [\"/bin/sh\", \"-c\", \"exec sleep {duration}\"]\n\
         resources: {{ cpu: 100m, memory: 16Mi }}\nplacement: {{ max_attempts: 1 }}\n"
    );
    (capsule, duration)
}

/// How many live (not zombie) processes run `sleep <duration>`.
fn sleeping(duration: &str) -> usize {
    let wanted = format!("sleep\0{duration}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|entry| {
            let proc = entry.path();
            let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
            cmdline == wanted.as_bytes() && !zombie
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fail_tasks_and_cancel_kills_them() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let c = &mesh.clients[0];
    let (capsule, duration) = sleeper();
    c.apply_capsule_text(&capsule).await.unwrap();

    // A per-task timeout ends the attempt; with one attempt the task FAILS and says why.
    let timed = JobSubmission {
        capsule: "sleeper".into(),
        tasks: Some(1),
        timeout: Some("1s".into()),
        ..JobSubmission::default()
    };
    let job = c.submit_job(&timed).await.unwrap();
    let done = eventually("the timed-out job ends", async || {
        let j = c.job(job.id).await.ok()?;
        (j.state != JobState::Running).then_some(j)
    })
    .await;
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    let task = &c.job_tasks(job.id).await.unwrap()[0];
    assert!(format!("{task:?}").contains("timed out"), "{task:?}");

    // Cancel ends every task as CANCELLED and kills their processes.
    let job = c
        .submit_job(&JobSubmission { capsule: "sleeper".into(), tasks: Some(3), ..JobSubmission::default() })
        .await
        .unwrap();
    eventually("three tasks running", async || {
        let t = c.job_tasks(job.id).await.ok()?;
        (t.iter().all(|t| t.state == TaskState::Running) && sleeping(&duration) == 3).then_some(())
    })
    .await;
    let cancelled = c.cancel_job(job.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(c.job_tasks(job.id).await.unwrap().iter().all(|t| t.state == TaskState::Cancelled));
    eventually("every task process is gone", async || (sleeping(&duration) == 0).then_some(())).await;
    // Cancelling twice or an unknown job is a clear error.
    let error = c.cancel_job(falak_core::job::JobId(999)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    mesh.stop().await;
}
