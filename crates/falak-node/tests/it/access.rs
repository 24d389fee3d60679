//! API tokens on real daemons: the bootstrap admin token is committed, tokens made through the
//! API work on every node with their role, and expiry and revocation take effect on every node.

use std::time::Duration;

use falak_api::token::CreateToken;
use falak_api::{Client, ErrorCode};
use falak_core::access::Role;

use crate::daemon::{CAPSULE, InProcessMesh};

/// A client of the same node as `client`, sending `token`.
fn with(client: &Client, token: &str) -> Client {
    client.clone().with_token(Some(token.to_owned()))
}

/// The job once it is no longer running (at most 20 s).
async fn finished(client: &Client, job: falak_core::job::JobId) -> falak_api::job::JobInfo {
    let mut info = client.job(job).await.unwrap();
    for _ in 0..200 {
        if info.state != falak_core::job::JobState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        info = client.job(job).await.unwrap();
    }
    info
}

/// Poll until `check` holds or 10 s pass.
async fn within_seconds(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_have_roles_expire_and_are_revoked_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 2).await;
    let c = &mesh.clients;

    // The bootstrap admin token is in the ledger, hashed, and the list never shows a secret.
    within_seconds("the bootstrap admin token commits", async || {
        c[1].tokens().await.is_ok_and(|t| t.iter().any(|t| t.name == "admin" && t.role == Role::Admin))
    })
    .await;
    let listed = serde_json::to_string(&c[0].tokens().await.unwrap()).unwrap();
    let secret = mesh.token.rsplit('.').next().unwrap();
    assert!(!listed.contains(secret), "a token list shows the secret: {listed}");

    // A read token, made through node 0, works on node 1 — and only for reading.
    let read = c[0]
        .create_token(&CreateToken { name: "viewer".into(), role: Role::Read, ttl_seconds: None, rate_limit: None })
        .await
        .unwrap();
    assert!(read.token.starts_with("falak-token-v1."));
    let reader = with(&c[1], &read.token);
    within_seconds("node 1 accepts the new token", async || reader.nodes().await.is_ok()).await;
    let refused = reader.apply_capsule_text(CAPSULE).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden), "{refused}");
    assert!(refused.to_string().contains("has role read"), "{refused}");
    assert_eq!(reader.tokens().await.unwrap_err().code(), Some(ErrorCode::Forbidden));

    // A deploy token with a one-second lifetime stops working after it.
    let short = c[0]
        .create_token(&CreateToken { name: "brief".into(), role: Role::Deploy, ttl_seconds: Some(1), rate_limit: None })
        .await
        .unwrap();
    let deployer = with(&c[0], &short.token);
    deployer.apply_capsule_text(CAPSULE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = deployer.nodes().await.unwrap_err();
    assert_eq!(expired.code(), Some(ErrorCode::Unauthorized));
    assert!(expired.to_string().contains("expired"), "{expired}");

    // Revoked through node 1: refused on both nodes once the revocation commits.
    let revoked = c[1].revoke_token(read.info.id).await.unwrap();
    assert_eq!(revoked.state, "revoked");
    for client in [&c[0], &c[1]] {
        let reader = with(client, &read.token);
        within_seconds("the revocation reaches every node", async || {
            reader.nodes().await.is_err_and(|e| e.to_string().contains("revoked"))
        })
        .await;
    }

    // No token, a forged one: 401 naming what to do.
    let anonymous = c[0].clone().with_token(None);
    let error = anonymous.nodes().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unauthorized));
    assert!(error.to_string().contains("needs a bearer token"), "{error}");
    assert_eq!(anonymous.health().await.unwrap().trim(), "ok", "/healthz stays open");
    let forged = format!("{}.{}", read.token.rsplit_once('.').unwrap().0, "00".repeat(32));
    assert_eq!(with(&c[0], &forged).nodes().await.unwrap_err().code(), Some(ErrorCode::Unauthorized));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capsules_run_only_when_signed_by_a_trusted_unrevoked_key() {
    use falak_api::deployer::TrustDeployer;
    use falak_api::job::JobSubmission;
    use falak_core::job::JobState;
    use falak_core::signing::DeployerKey;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 2).await;
    let c = &mesh.clients;

    // Unsigned, and signed by a key the mesh does not trust: refused, nothing stored.
    let unsigned = c[0].clone().with_deployer(None);
    let error = unsigned.apply_capsule_text(CAPSULE).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Forbidden), "{error}");
    assert!(error.to_string().contains("not signed"), "{error}");
    let key = Arc::new(DeployerKey::from_seed([7; 32]));
    let stranger = c[1].clone().with_deployer(Some(key.clone()));
    let error = stranger.apply_capsule_text(CAPSULE).await.unwrap_err();
    assert!(error.to_string().contains("does not trust"), "{error}");
    assert!(c[0].capsules().await.unwrap().is_empty());

    // Once an admin trusts the key, it signs; once revoked, what it signed no longer runs.
    let info = c[0].trust_deployer(&TrustDeployer { name: "ci".into(), public_key: key.id() }).await.unwrap();
    assert_eq!(info.id, key.id());
    within_seconds("node 1 sees the key", async || stranger.apply_capsule_text(CAPSULE).await.is_ok()).await;
    c[0].revoke_deployer(key.id()).await.unwrap();
    let job = c[0]
        .submit_job(&JobSubmission { capsule: "hello".into(), tasks: Some(2), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = finished(&c[0], job.id).await;
    assert_eq!(info.state, JobState::Failed, "{info:?}");
    let tasks = c[0].job_tasks(job.id).await.unwrap();
    let error = tasks[0].error.clone().unwrap_or_default();
    assert!(error.contains("was revoked"), "{tasks:?}");
    let error = stranger.apply_capsule_text(&CAPSULE.replace("hello", "hello2")).await.unwrap_err();
    assert!(error.to_string().contains("was revoked"), "{error}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_reach_the_task_and_appear_nowhere_else() {
    use falak_api::job::JobSubmission;
    use falak_core::job::JobState;

    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 2).await;
    let c = &mesh.clients;
    let value = format!("s3cr3t-{:016x}", rand::random::<u64>());
    // The task prints the value reversed: proof it had it, without the value in any output.
    let capsule = format!(
        "name: vault\nkind: process\ncommand: [python3, -c, \"import os; print(os.environ['API_KEY'][::-1])\"]\n\
         secrets: {{ API_KEY: {value} }}\nresources: {{ cpu: 100m, memory: 64Mi }}\n"
    );
    let reversed: String = value.chars().rev().collect();
    c[0].apply_capsule_text(&capsule).await.unwrap();
    let job = c[1]
        .submit_job(&JobSubmission { capsule: "vault".into(), tasks: Some(2), ..JobSubmission::default() })
        .await
        .unwrap();
    let info = finished(&c[0], job.id).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    let result = c[0].job_result_text(job.id).await.unwrap();
    assert_eq!(result, format!("{reversed}\n{reversed}\n"), "the task saw the secret");

    // A function with the same secret: its instances have it, reversed in the answer.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("README"), "the command does the work\n").unwrap();
    let stored = c[0].store_artifact(falak_artifact::bundle::pack(src.path()).unwrap()).await.unwrap();
    let mut doc = falak_core::function::FunctionDocument::parse(&format!(
        "name: vault-fn\nkind: function\nruntime: exec\n\
         command: [python3, -c, \"import os, sys; sys.stdout.write(os.environ['API_KEY'][::-1])\"]\n\
         secrets: {{ API_KEY: {value} }}\n"
    ))
    .unwrap();
    doc.artifact = Some(stored.id);
    c[0].deploy_function(&doc).await.unwrap();
    let answer = c[0]
        .http()
        .post(format!("{}/fn/vault-fn", c[0].base_url()))
        .bearer_auth(&mesh.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.unwrap(), reversed, "the instance saw the secret");
    let function = serde_json::to_string(&c[0].function("vault-fn").await.unwrap()).unwrap();

    // What the API shows, the events, and every file the nodes wrote (ledger, logs): no value.
    let shown = serde_json::to_string(&c[1].capsule("vault").await.unwrap()).unwrap();
    assert!(shown.contains("API_KEY") && shown.contains("redacted"), "{shown}");
    let events_url = format!("{}/api/v1/events?follow=false", c[0].base_url());
    let events = c[0].http().get(&events_url).bearer_auth(&mesh.token).send().await.unwrap().text().await.unwrap();
    let tasks = serde_json::to_string(&c[0].job_tasks(job.id).await.unwrap()).unwrap();
    for (what, text) in [("capsule", &shown), ("events", &events), ("tasks", &tasks), ("function", &function)] {
        assert!(!text.contains(&value), "the secret is in the {what}: {text}");
    }
    mesh.stop().await;
    let mut stack = vec![dir.path().to_owned()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            let (path, kind) = (entry.path(), entry.file_type().unwrap());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                files += 1;
                let bytes = std::fs::read(&path).unwrap_or_default();
                let found = bytes.windows(value.len()).any(|w| w == value.as_bytes());
                assert!(!found, "the secret is on disk in {}", path.display());
            }
        }
    }
    assert!(files > 10, "only {files} files searched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_packets_sealed_with_another_key_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = InProcessMesh::start(dir.path(), 1).await;
    let bootstrap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("node-1/bootstrap.json")).unwrap()).unwrap();
    let gossip: std::net::SocketAddr = bootstrap["members"][0]["gossip_addr"].as_str().unwrap().parse().unwrap();
    // A datagram in the seal's format, sealed with some other key (here: random bytes).
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..5 {
        let mut packet = vec![1u8];
        packet.extend((0..200).map(|_| rand::random::<u8>()));
        socket.send_to(&packet, gossip).await.unwrap();
    }
    within_seconds("the node counts the forged packets", async || {
        let metrics = mesh.clients[0].metrics().await.unwrap();
        metrics.lines().any(|l| l == "falak_membership_packets_dropped_total{reason=\"bad_seal\"} 5")
    })
    .await;
    mesh.stop().await;
}
