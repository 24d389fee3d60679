//! Issue 11's orbit prefetch with five real nodes: a capsule's code reaches the nodes gravity
//! ranks first before any task of it runs; the holders gossip it, `capsule show` lists them,
//! the warmth term puts a task on one of them; `kill -9` of a holder recruits another node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use falak_api::Client;
use falak_api::job::JobSubmission;
use falak_bench::mesh::{Mesh, MeshOptions};
use falak_core::capsule::CapsuleDocument;
use falak_core::job::{JobState, TaskId};
use falak_node::prefetch::PREFETCH_NODES;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

/// The nodes holding `capsule`'s code, once `want` says the set is right (within 20 s).
async fn holders(client: &Client, capsule: &str, want: impl Fn(&BTreeSet<String>) -> bool) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = client.capsule(capsule).await.unwrap();
        let held: BTreeSet<String> =
            info.code.as_ref().map(|c| c.held_by.iter().cloned().collect()).unwrap_or_default();
        if want(&held) {
            return held;
        }
        assert!(Instant::now() < deadline, "holders of {capsule} never as wanted; last {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_s_code_reaches_its_orbit_before_its_tasks_and_a_lost_holder_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), &MeshOptions::new(5)).unwrap();
    mesh.wait_ready(Duration::from_secs(60)).await.unwrap();
    mesh.wait_all_healthy(Duration::from_secs(30)).await.unwrap();
    let client = mesh.nodes[0].client.clone();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("run.sh"), "#!/bin/sh\necho prefetched\n").unwrap();
    let stored = client.store_artifact(falak_artifact::bundle::pack(src.path()).unwrap()).await.unwrap();
    let mut doc = CapsuleDocument::read("name: tool\nkind: process\ncommand: [\"/bin/sh\", \"run.sh\"]\n").unwrap();
    doc.artifact = Some(stored.id);
    client.apply_capsule(&doc).await.unwrap();

    // The orbit fetches it with no task submitted; the uploading node holds it as well.
    let first = holders(&client, "tool", |held| held.len() >= PREFETCH_NODES).await;
    assert!(first.len() >= PREFETCH_NODES, "{first:?}");
    let shown = client.capsule("tool").await.unwrap();
    assert_eq!(shown.code.as_ref().unwrap().id, stored.id.to_string()[..16]);

    // A task goes to a node that holds the code, and its decision record says so.
    let submission = JobSubmission { capsule: "tool".into(), tasks: Some(1), ..JobSubmission::default() };
    let job = client.submit_job(&submission).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let task = loop {
        let task = client.task(TaskId { job: job.id, index: 0 }).await.unwrap();
        if client.job(job.id).await.unwrap().state != JobState::Running {
            break task;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {task:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ran_on = task.node.as_ref().unwrap().name.clone();
    let now_held = holders(&client, "tool", |_| true).await;
    assert!(now_held.contains(&ran_on), "the task ran on {ran_on}, not on a holder {now_held:?}");
    let decision = client.decision(TaskId { job: job.id, index: 0 }).await.unwrap();
    let winner = decision.candidates.iter().find(|c| c.winner).unwrap();
    let warmth = winner.terms.iter().find(|t| t.name == "warmth").unwrap();
    assert_eq!(warmth.value, 1.0, "{winner:?}");

    // Holders die until fewer than the orbit's size are left: then another node takes the
    // free place and fetches the code. (The uploading node holds it too, so the first death may
    // leave enough holders, and nobody needs recruiting.)
    let mut held = holders(&client, "tool", |held| held.len() >= PREFETCH_NODES).await;
    let mut killed = Vec::new();
    loop {
        let victim_name = held.iter().find(|n| **n != mesh.nodes[0].name).unwrap().clone();
        let victim = mesh.nodes.iter().position(|n| n.name == victim_name).unwrap();
        mesh.kill9(victim).unwrap();
        killed.push(victim_name.clone());
        let before: BTreeSet<String> = held.iter().filter(|n| !killed.contains(n)).cloned().collect();
        let after = holders(&client, "tool", |now| {
            now.len() >= PREFETCH_NODES
                && !now.iter().any(|n| killed.contains(n))
                && (before.len() >= PREFETCH_NODES || now.iter().any(|n| !before.contains(n)))
        })
        .await;
        if before.len() < PREFETCH_NODES {
            let recruited: Vec<&String> = after.iter().filter(|n| !before.contains(*n)).collect();
            assert!(!recruited.is_empty(), "holders left {before:?}, after {after:?}");
            break;
        }
        held = after;
        assert!(killed.len() < 3, "holders never fell under {PREFETCH_NODES}: {held:?}");
    }
}
