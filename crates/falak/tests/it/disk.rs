//! Issue 10's disk limit with real node processes: tasks that write without end are stopped
//! at their capsule's `resources.disk`, with a report that names it, while the ledger keeps
//! committing and other jobs keep completing on the same nodes.

use std::time::{Duration, Instant};

use falak_api::Client;
use falak_api::job::JobSubmission;
use falak_core::job::{JobId, JobState, TaskState};

use crate::failover::wait_job;
use crate::procs::{HELLO, Mesh};

/// Writes 4 MiB every 100 ms (about 40 MB/s) into ever new files, so `RLIMIT_FSIZE` never
/// trips: only the node's accounting can stop it, about 13 s in.
const FLOOD: &str = r#"name: flood
kind: process
command: ["/bin/sh", "-c", "i=0; while :; do head -c 4194304 /dev/zero > f$((i=i+1)); sleep 0.1; done"]
resources: { cpu: 100m, memory: 32Mi, disk: 512Mi }
placement: { strategy: balanced, max_attempts: 1 }
"#;

const LIMIT: u64 = 512 << 20;

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_falak"))
}

async fn submit(client: &Client, capsule: &str, tasks: u32) -> JobId {
    let submission = JobSubmission { capsule: capsule.into(), tasks: Some(tasks), ..JobSubmission::default() };
    client.submit_job(&submission).await.expect("job accepted").id
}

/// How many tasks of `job` are RUNNING now.
async fn running(client: &Client, job: JobId) -> usize {
    let tasks = client.job_tasks(job).await.unwrap();
    tasks.iter().filter(|t| t.state == TaskState::Running).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_writing_without_end_are_stopped_at_their_disk_limit_while_other_jobs_complete() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(60)).await;
    let client = mesh.nodes[0].client.clone();
    client.apply_capsule_text(FLOOD).await.unwrap();
    client.apply_capsule_text(HELLO).await.unwrap();

    let flood = submit(&client, "flood", 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(&client, flood).await < 2 {
        assert!(Instant::now() < deadline, "the flood never ran: {:?}", client.job_tasks(flood).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flood_started = Instant::now();

    // While both write, the ledger commits other jobs' claims and results.
    let mut completed_while_flooding = 0;
    for _ in 0..3 {
        let job = submit(&client, "hello", 20).await;
        let info = wait_job(&client, job, Duration::from_secs(30)).await;
        assert_eq!(info.state, JobState::Completed, "{info:?}");
        if running(&client, flood).await == 2 {
            completed_while_flooding += 1;
        }
    }
    assert!(completed_while_flooding >= 1, "no job completed while the flood ran");

    let info = wait_job(&client, flood, Duration::from_secs(90)).await;
    let stopped_after = flood_started.elapsed();
    assert_eq!(info.state, JobState::Failed, "{info:?}");
    let tasks = client.job_tasks(flood).await.unwrap();
    for task in &tasks {
        assert_eq!(task.state, TaskState::Failed, "{task:?}");
        assert_eq!(
            task.error.as_deref(),
            Some("killed by its disk limit (536870912 bytes): its working directory grew past resources.disk"),
            "{task:?}"
        );
        // The stopped attempt's files were given back; its logs stay for `falak job logs`.
        let node = task.node.as_ref().expect("the node that ran it");
        let index = mesh.nodes.iter().position(|n| n.name == node.name).unwrap();
        let workdir = mesh.nodes[index].dir.join("tasks").join(format!("{}.a1", task.id));
        let mut left: Vec<String> = std::fs::read_dir(&workdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["stderr.log", "stdout.log"], "{}", workdir.display());
    }
    println!(
        "{} MiB limit at ~40 MB/s: both flood tasks stopped within {stopped_after:?} of running; {completed_while_flooding} of 3 \
         jobs of 20 tasks completed meanwhile",
        LIMIT >> 20
    );

    // The mesh still takes work.
    let after = submit(&client, "hello", 10).await;
    assert_eq!(wait_job(&client, after, Duration::from_secs(30)).await.state, JobState::Completed);
}
