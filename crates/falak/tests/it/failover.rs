//! The foundation's promise with real processes: a 3-node mesh on loopback runs a 200-task job;
//! `kill -9` of the busiest node or of the ledger leader mid-job, or a SIGSTOP long enough to
//! lose every lease, and the job still completes with each task COMPLETED exactly once; a late
//! result from a paused node is rejected; a whole-mesh restart keeps capsules, jobs and results.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use falak_api::job::{JobInfo, JobSubmission};
use falak_api::{Client, EventItem};
use falak_core::job::{JobId, JobState, TaskState};
use futures_util::StreamExt;

use crate::procs::{HELLO, Mesh};

/// Each task sleeps a little so that a kill lands while many are running.
const SLOW: &str = r#"name: slow
kind: process
command: ["/bin/sh", "-c", "sleep 1; echo done $FALAK_TASK_INDEX"]
resources: { cpu: 100m, memory: 16Mi }
placement: { strategy: balanced, max_attempts: 5 }
"#;

const TASKS: u32 = 200;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

pub(crate) async fn submit(client: &Client, capsule: &str, tasks: u32) -> JobInfo {
    let submission = JobSubmission { capsule: capsule.into(), tasks: Some(tasks), ..JobSubmission::default() };
    client.submit_job(&submission).await.expect("job accepted")
}

pub(crate) async fn wait_job(client: &Client, job: JobId, limit: Duration) -> JobInfo {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(info) = client.job(job).await
            && info.state != JobState::Running
        {
            return info;
        }
        assert!(Instant::now() < deadline, "job {job} not finished within {limit:?}: {:?}", client.job(job).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node index running the most tasks of `job` now, once at least `min` run somewhere.
async fn busiest(mesh: &Mesh, job: JobId, min: usize) -> usize {
    let client = &mesh.nodes[0].client;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeMap::new();
    while Instant::now() < deadline {
        let tasks = client.job_tasks(job).await.unwrap();
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for t in tasks.iter().filter(|t| matches!(t.state, TaskState::Running | TaskState::Assigned)) {
            *running.entry(t.node.as_ref().unwrap().name.clone()).or_default() += 1;
        }
        if running.values().sum::<usize>() >= min {
            let (name, _) = running.iter().max_by_key(|(_, n)| **n).unwrap();
            return mesh.nodes.iter().position(|n| &n.name == name).unwrap();
        }
        seen = running;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never {min} tasks of {job} running at once; last seen {seen:?}");
}

/// Per task of `job`, how many times it entered COMPLETED, from a node's event history;
/// also how many results were rejected.
async fn completions(client: &Client, job: JobId) -> (BTreeMap<String, usize>, usize) {
    let stream = client.events(false, None).await.unwrap();
    let items: Vec<_> = stream.collect().await;
    let mut completed = BTreeMap::new();
    let mut rejected = 0;
    for item in items {
        match item.unwrap() {
            EventItem::Lagged { missed } => panic!("event history lagged by {missed}"),
            EventItem::Gap { resumes_at } => panic!("event history has a gap before index {resumes_at}"),
            EventItem::Event(e) => {
                let task = e.data["task"].as_str().unwrap_or_default().to_owned();
                if !task.starts_with(&format!("{job}-")) {
                    continue;
                }
                if e.kind == "task_state" && e.data["state"] == "COMPLETED" {
                    *completed.entry(task).or_default() += 1;
                } else if e.kind == "result_rejected" {
                    rejected += 1;
                }
            }
        }
    }
    (completed, rejected)
}

async fn assert_completed_once(survivor: &Client, job: JobId) -> usize {
    let info = wait_job(survivor, job, Duration::from_secs(90)).await;
    assert_eq!(info.state, JobState::Completed, "{info:?}");
    assert_eq!(info.counts.completed, TASKS, "{info:?}");
    let (completed, rejected) = completions(survivor, job).await;
    assert_eq!(completed.len(), TASKS as usize, "every task completed");
    let twice: Vec<_> = completed.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tasks completed more than once: {twice:?}");
    let text = survivor.job_result_text(job).await.unwrap();
    assert_eq!(text.lines().count(), TASKS as usize);
    assert!(text.starts_with("done 0\ndone 1\n"), "results in task order: {text:.40}");
    rejected
}

async fn started_mesh(dir: &std::path::Path) -> Mesh {
    let mut mesh = Mesh::start(binary(), dir, 3);
    mesh.wait_ready(Duration::from_secs(30)).await;
    mesh.nodes[0].client.apply_capsule_text(SLOW).await.unwrap();
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_busiest_node_mid_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = started_mesh(dir.path()).await;
    let job = submit(&mesh.nodes[1].client, "slow", TASKS).await;
    let victim = busiest(&mesh, job.id, 30).await;
    mesh.kill9(victim);
    let survivor = mesh.client_except(&[victim]).clone();
    assert_completed_once(&survivor, job.id).await;
    let tasks = survivor.job_tasks(job.id).await.unwrap();
    assert!(tasks.iter().any(|t| t.attempt > 1), "some task of the killed node was re-elected (attempt > 1)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_mid_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = started_mesh(dir.path()).await;
    let job = submit(&mesh.nodes[1].client, "slow", TASKS).await;
    busiest(&mesh, job.id, 30).await;
    let leader = mesh.leader().await;
    mesh.kill9(leader);
    let survivor = mesh.client_except(&[leader]).clone();
    assert_completed_once(&survivor, job.id).await;
    let new_leader = mesh.leader().await;
    assert_ne!(new_leader, leader, "a new leader was elected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_loses_its_leases_and_its_late_results_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = started_mesh(dir.path()).await;
    let job = submit(&mesh.nodes[1].client, "slow", TASKS).await;
    let victim = busiest(&mesh, job.id, 30).await;
    mesh.signal(victim, libc::SIGSTOP);
    // Longer than detection (about 1.3 s) and the lease (2 s): its tasks are re-elected, and
    // its own children finish meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    mesh.signal(victim, libc::SIGCONT);
    let survivor = mesh.client_except(&[victim]).clone();
    assert_completed_once(&survivor, job.id).await;
    // The resumed node reports its attempts' results; they carry stale fencing tokens.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, rejected) = completions(&survivor, job.id).await;
        if rejected > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no late result was rejected:\n{}", mesh.log(victim));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = survivor.metrics().await.unwrap();
    assert!(metrics.contains("falak_results_rejected_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_mesh_restart_keeps_capsules_jobs_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(30)).await;
    let c = mesh.nodes[2].client.clone();
    c.apply_capsule_text(HELLO).await.unwrap();
    let job = submit(&c, "hello", 20).await;
    let before = wait_job(&c, job.id, Duration::from_secs(30)).await;
    assert_eq!(before.state, JobState::Completed);
    let result_before = c.job_result_text(job.id).await.unwrap();
    for i in 0..3 {
        let status = mesh.stop(i);
        assert!(status.success(), "{} exits cleanly on SIGTERM: {status}\n{}", mesh.nodes[i].name, mesh.log(i));
    }
    for i in 0..3 {
        mesh.spawn(i);
    }
    mesh.wait_ready(Duration::from_secs(30)).await;
    for node in &mesh.nodes {
        let capsules = node.client.capsules().await.unwrap();
        assert!(capsules.iter().any(|c| c.name == "hello"), "{}: {capsules:?}", node.name);
        let after = node.client.job(job.id).await.unwrap();
        assert_eq!(after.state, JobState::Completed);
        assert_eq!(node.client.job_result_text(job.id).await.unwrap(), result_before);
    }
    // The restarted mesh still takes work.
    let again = submit(&mesh.nodes[0].client, "hello", 5).await;
    assert_eq!(wait_job(&mesh.nodes[1].client, again.id, Duration::from_secs(30)).await.state, JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_offline_past_the_grace_period_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    // Four nodes: the first three vote, the fourth is a learner.
    let mut mesh = Mesh::start(binary(), dir.path(), 4);
    mesh.wait_ready(Duration::from_secs(30)).await;
    let voters = |nodes: &[falak_api::node::NodeInfo]| -> Vec<String> {
        let mut v: Vec<String> = nodes.iter().filter(|n| n.voter).map(|n| n.name.clone()).collect();
        v.sort();
        v
    };
    let c = mesh.nodes[3].client.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while voters(&c.nodes().await.unwrap()) != ["node-1", "node-2", "node-3"] {
        assert!(Instant::now() < deadline, "voters never settled: {:?}", c.nodes().await.unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // kill -9 a voter that is not the leader, so the replacement is the leader's doing.
    let leader = mesh.leader().await;
    let victim = (0..3).find(|i| *i != leader).unwrap();
    mesh.kill9(victim);
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..4).filter(|i| *i != victim).map(|i| mesh.nodes[i].name.clone()).collect();
        v.sort();
        v
    };
    // OFFLINE after about a second, replaced after the 10 s grace.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = c.nodes().await.unwrap();
        if voters(&nodes) == expected {
            break;
        }
        assert!(Instant::now() < deadline, "voter {} not replaced: {nodes:?}", mesh.nodes[victim].name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new voter set commits writes.
    mesh.nodes[3].client.apply_capsule_text(HELLO).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_kills_the_task_processes_its_killed_run_left_behind() {
    use falak_api::service::ServiceSubmission;
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(30)).await;
    let c = mesh.nodes[0].client.clone();
    let server = "name: server\nkind: process\ncommand: [\"sleep\", \"60\"]\nresources: { cpu: 100m, memory: 16Mi }\n";
    c.apply_capsule_text(server).await.unwrap();
    let submission = ServiceSubmission { name: "web".into(), capsule: "server".into(), version: None, replicas: 3 };
    c.apply_service(&submission).await.unwrap();
    // A replica on a node other than node-1, and the processes of its group, from the leader
    // the node recorded (the task's own pids are its pid namespace's).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (victim, pids) = loop {
        let service = c.service("web").await.unwrap();
        let found = service.tasks.iter().find_map(|t| {
            let node = t.node.as_ref().filter(|n| n.name != "node-1" && t.state == TaskState::Running)?;
            let i = mesh.nodes.iter().position(|m| m.name == node.name)?;
            let record = mesh.nodes[i].dir.join(format!("groups/{}.a{}", t.id, t.attempt));
            let leader: i32 = std::fs::read_to_string(record).ok()?.split_whitespace().next()?.parse().ok()?;
            Some((i, process_group(leader)))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no replica running off node-1: {service:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!pids.is_empty());
    // SAFETY: signal 0 only checks that the process exists.
    let alive = |pid: &i32| unsafe { libc::kill(*pid, 0) } == 0;
    mesh.kill9(victim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pids.iter().all(alive), "a task outlives its node's kill -9 (its own process group)");
    mesh.spawn(victim);
    mesh.wait_ready(Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(alive) {
        assert!(Instant::now() < deadline, "the restarted node left processes of {pids:?} running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Killed with the workload cgroups the dead run left, or (hosts without cgroups) by the
    // recorded process groups.
    let log = mesh.log(victim);
    assert!(
        log.contains("removed workload cgroups the previous run of this node left")
            || log.contains("killed task processes left by the previous run"),
        "{log}"
    );
    // The service is whole again: three replicas running.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.service("web").await.unwrap().running != 3 {
        assert!(Instant::now() < deadline, "{:?}", c.service("web").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live processes of process group `leader` (a task's relay, its namespace's init and the
/// task itself).
fn process_group(leader: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let mut fields = stat.rsplit_once(") ")?.1.split_whitespace();
            let state = fields.next()?;
            let group: i32 = fields.nth(1)?.parse().ok()?;
            (group == leader && state != "Z").then_some(pid)
        })
        .collect()
}
