//! Issue 11's rolling updates with real nodes: a 4-replica service moves to a new capsule
//! version with `max_unavailable: 1` and never has fewer than 3 replicas running (polled every
//! 50 ms throughout); a version whose replicas crash is rolled back by the mesh itself and the
//! service ends on the version it had, at full strength. With the CLI, as a user who is not
//! root, `falak capsule rollback` too.

use std::time::{Duration, Instant};

use falak_api::Client;
use falak_api::service::{ServiceInfo, ServiceUpdateRequest};
use falak_bench::mesh::{Mesh, MeshOptions};
use falak_core::job::TaskState;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

fn capsule(version: &str, script: &str) -> String {
    format!(
        "name: web\nkind: process\nenv: {{ RELEASE: \"{version}\" }}\ncommand: [\"/bin/sh\", \"-c\", {script:?}]\n\
         resources: {{ cpu: 50m, memory: 16Mi }}\n"
    )
}

fn running(service: &ServiceInfo) -> usize {
    service.tasks.iter().filter(|t| t.state == TaskState::Running).count()
}

/// Poll `web` every 50 ms until its update has ended; the fewest replicas seen running.
async fn watch_update(client: &Client, limit: Duration) -> (ServiceInfo, usize) {
    let deadline = Instant::now() + limit;
    let mut fewest = usize::MAX;
    loop {
        let service = client.service("web").await.unwrap();
        fewest = fewest.min(running(&service));
        if service.rollout.as_ref().is_some_and(|r| r.state != "progressing") {
            return (service, fewest);
        }
        assert!(Instant::now() < deadline, "the update did not end within {limit:?}: {service:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_running(client: &Client, version: u32, replicas: usize) -> ServiceInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let service = client.service("web").await.unwrap();
        if service.version == version && running(&service) == replicas {
            return service;
        }
        assert!(Instant::now() < deadline, "never {replicas} replicas of version {version}: {service:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_three_of_four_running_and_a_crashing_version_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), &MeshOptions::new(3)).unwrap();
    mesh.wait_ready(Duration::from_secs(60)).await.unwrap();
    mesh.wait_all_healthy(Duration::from_secs(30)).await.unwrap();
    let client = mesh.nodes[0].client.clone();
    client.apply_capsule_text(&capsule("one", "sleep 600")).await.unwrap();
    client.apply_service_text("name: web\ncapsule: web\nreplicas: 4\n").await.unwrap();
    wait_running(&client, 1, 4).await;

    // Version 2: replaced one replica at a time.
    client.apply_capsule_text(&capsule("two", "sleep 600")).await.unwrap();
    let update = ServiceUpdateRequest {
        version: Some(2),
        max_unavailable: Some(1),
        min_ready: Some("1s".into()),
        ..ServiceUpdateRequest::default()
    };
    let started = client.update_service("web", &update).await.unwrap();
    assert_eq!(started.rollout.as_ref().map(|r| (r.from_version, r.to_version)), Some((1, 2)));
    let (done, fewest) = watch_update(&client, Duration::from_secs(120)).await;
    assert_eq!(done.rollout.as_ref().unwrap().state, "done", "{done:?}");
    assert!(fewest >= 3, "only {fewest} replicas were running at one point of the update");
    let on_two = wait_running(&client, 2, 4).await;
    assert!(on_two.tasks.iter().all(|t| t.job == on_two.job), "{on_two:?}");

    // Version 3 crashes at once: the mesh rolls it back and the service stays on version 2.
    client.apply_capsule_text(&capsule("three", "echo cannot read config >&2; exit 1")).await.unwrap();
    let update =
        ServiceUpdateRequest { version: Some(3), min_ready: Some("1s".into()), ..ServiceUpdateRequest::default() };
    client.update_service("web", &update).await.unwrap();
    let (back, fewest) = watch_update(&client, Duration::from_secs(120)).await;
    let rollout = back.rollout.clone().unwrap();
    assert_eq!(rollout.state, "rolled_back", "{back:?}");
    let reason = rollout.reason.unwrap();
    assert!(reason.contains("version 3") && reason.contains("cannot read config"), "{reason}");
    assert!(fewest >= 3, "only {fewest} replicas were running while version 3 was tried");
    let restored = wait_running(&client, 2, 4).await;
    assert_eq!(restored.job, on_two.job, "the service is on the job of version 2 again");
    // Every node agrees.
    for node in &mesh.nodes {
        let seen = node.client.service("web").await.unwrap();
        assert_eq!((seen.version, seen.rollout.unwrap().state.as_str()), (2, "rolled_back"), "{}", node.name);
    }
}

/// `falak service update --wait` as a user who is not root: done, then rolled back (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_updates_and_rolls_back_a_service_with_the_cli() {
    use super::isolation::{Workspace, unprivileged_user};
    let ws = Workspace::new(unprivileged_user());
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0"]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(180)).await;
    ws.write("v1.yaml", &capsule("one", "sleep 600"));
    ws.write("v2.yaml", &capsule("two", "sleep 600"));
    ws.write("v3.yaml", &capsule("three", "exit 3"));
    ws.write("svc.yaml", "name: web\ncapsule: web\nreplicas: 2\n");
    ws.run(&["capsule", "apply", "-f", "v1.yaml"], Duration::from_secs(30)).await;
    ws.run(&["service", "apply", "-f", "svc.yaml"], Duration::from_secs(30)).await;
    ws.run(&["capsule", "apply", "-f", "v2.yaml"], Duration::from_secs(30)).await;
    let out = ws.run(&["service", "update", "web", "--min-ready", "1s", "--wait"], Duration::from_secs(120)).await;
    assert!(out.contains("service web: updated to web:2"), "{out}");
    ws.run(&["capsule", "apply", "-f", "v3.yaml"], Duration::from_secs(30)).await;
    let failed = ws.falak(&["service", "update", "web", "--min-ready", "1s", "--wait"]).output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&failed.stdout), String::from_utf8_lossy(&failed.stderr));
    assert!(!failed.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("update to version 3 rolled back to version 2"), "{stdout}");
    assert!(stderr.contains("service web was rolled back"), "{stderr}");
    let shown = ws.run(&["service", "show", "web"], Duration::from_secs(30)).await;
    assert!(shown.contains("web:2"), "{shown}");
    // The capsule too: version 2's spec becomes version 4.
    let back = ws.run(&["capsule", "rollback", "web", "--to", "2"], Duration::from_secs(30)).await;
    assert!(back.contains("capsule web version 4 applied: version 2 again"), "{back}");
    mesh.stop_within(Duration::from_secs(30)).await;
}
