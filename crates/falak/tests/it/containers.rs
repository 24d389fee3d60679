//! Issue 11's container capsules with real nodes, a real registry (Debian's `docker-registry`)
//! and a real OCI runtime (Debian's `runc`), on an image the test builds around Debian's static
//! busybox: a 60-task container job completes across the mesh; `kill -9` of a node mid-job
//! reruns its tasks elsewhere; cancel leaves no process, mount, cgroup or runtime state; a node
//! that is not root runs a container job rootless, with a directory of its own mounted read-only.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use falak_api::Client;
use falak_bench::mesh::{Mesh, MeshOptions};
use falak_bench::registry::{Registry, build_layout, busybox_layer, layer, push};
use falak_core::job::{JobId, JobState, TaskState};

use crate::failover::{submit, wait_job};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_falak"))
}

/// Push the test image: busybox and `/etc/app.conf`. Returns its tagged reference.
fn push_image(registry: &Registry, dir: &Path) -> String {
    let layers = [busybox_layer().unwrap(), layer(&[("etc/app.conf", b"from the image\n")])];
    build_layout(&dir.join("box"), "v1", &layers).unwrap();
    push(&dir.join("box"), "v1", registry, "box").unwrap();
    format!("{}/box:v1", registry.addr)
}

/// Wait until at least `min` tasks of `job` run; the names of the nodes running them.
async fn running_on(client: &Client, job: JobId, min: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = client.job_tasks(job).await.unwrap();
        let running: Vec<String> = tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .filter_map(|t| t.node.as_ref().map(|n| n.name.clone()))
            .collect();
        if running.len() >= min {
            return running;
        }
        assert!(Instant::now() < deadline, "never {min} tasks of {job} running: {tasks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes whose command line or mount table mentions `dir`.
fn leftovers_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // The nodes themselves run from the mesh dir; their workloads are what must be gone.
        if cmdline.contains(" node ") || cmdline.contains("falak up") {
            continue;
        }
        if cmdline.contains(&needle) {
            found.push(format!("process {pid}: {cmdline}"));
        }
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if let Some(line) = mounts.lines().find(|l| l.contains(&needle) && l.contains("overlay")) {
            found.push(format!("mount in {pid}: {line}"));
        }
    }
    found
}

/// Workload cgroups left in the nodes' scopes (`falak/node-*/<workload>`), any hierarchy.
fn workload_cgroups() -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = vec!["/sys/fs/cgroup".into()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            let path = entry.path();
            let text = path.to_string_lossy().into_owned();
            if let Some((_, after)) = text.split_once("/falak/node-") {
                if after.contains('/') {
                    found.push(text);
                }
                continue;
            }
            if path.components().count() < 12 {
                stack.push(path);
            }
        }
    }
    found
}

const TASKS: u32 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_jobs_complete_survive_a_killed_node_and_cancel_leaves_nothing() {
    let registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = push_image(&registry, work.path());
    let options = MeshOptions { insecure_registries: vec![registry.addr.clone()], ..MeshOptions::new(5) };
    let mesh_dir = work.path().join("mesh");
    let mut mesh = Mesh::start(binary(), &mesh_dir, &options).unwrap();
    mesh.wait_ready(Duration::from_secs(90)).await.unwrap();
    mesh.wait_all_healthy(Duration::from_secs(60)).await.unwrap();
    let pulled = mesh.nodes[0].client.pull_image(&image).await.unwrap();
    let pinned = format!("{image}@{}", pulled.digest);
    let capsule = |name: &str, script: &str| {
        format!(
            "name: {name}\nkind: container\nimage: \"{pinned}\"\ncommand: [\"sh\", \"-c\"]\nargs: [{script:?}]\n\
             workdir: /etc\nresources: {{ cpu: 50m, memory: 32Mi }}\nplacement: {{ strategy: spread, max_attempts: 4 }}\n"
        )
    };
    let client = mesh.nodes[0].client.clone();
    client
        .apply_capsule_text(&capsule("boxed", "echo task $FALAK_TASK_INDEX in $(pwd) as $(id -u): $(cat app.conf)"))
        .await
        .unwrap();
    client.apply_capsule_text(&capsule("slow", "sleep 4; echo done $FALAK_TASK_INDEX")).await.unwrap();
    client.apply_capsule_text(&capsule("forever", "sleep 600")).await.unwrap();

    // 60 tasks, spread over the mesh; each node pulls the image (from a peer) once.
    let job = submit(&client, "boxed", TASKS).await;
    let info = wait_job(&client, job.id, Duration::from_secs(240)).await;
    assert_eq!((info.state, info.counts.completed), (JobState::Completed, TASKS), "{info:?}");
    let text = client.job_result_text(job.id).await.unwrap();
    for i in 0..TASKS {
        assert!(text.contains(&format!("task {i} in /etc as 0: from the image\n")), "task {i}:\n{text}");
    }
    let tasks = client.job_tasks(job.id).await.unwrap();
    let nodes: BTreeSet<String> = tasks.iter().filter_map(|t| t.node.as_ref().map(|n| n.name.clone())).collect();
    assert!(nodes.len() >= 3, "the containers ran on several nodes: {nodes:?}");

    // kill -9 of a node running containers: its tasks run again elsewhere.
    let job = submit(&client, "slow", 20).await;
    let running = running_on(&client, job.id, 8).await;
    let victim_name = running.iter().find(|n| *n != &mesh.nodes[0].name).cloned().unwrap_or(running[0].clone());
    let victim = mesh.nodes.iter().position(|n| n.name == victim_name).unwrap();
    mesh.kill9(victim).unwrap();
    let survivor = mesh.client_except(&[victim]).unwrap().clone();
    let info = wait_job(&survivor, job.id, Duration::from_secs(180)).await;
    assert_eq!((info.state, info.counts.completed), (JobState::Completed, 20), "{info:?}");
    let tasks = survivor.job_tasks(job.id).await.unwrap();
    assert!(tasks.iter().any(|t| t.attempt > 1), "a task of the killed node ran again: {tasks:?}");
    assert!(tasks.iter().all(|t| t.node.as_ref().is_some_and(|n| n.name != victim_name)), "{tasks:?}");

    // Cancel: every container stopped, nothing left behind on the running nodes.
    let job = submit(&survivor, "forever", 8).await;
    running_on(&survivor, job.id, 8).await;
    survivor.cancel_job(job.id).await.unwrap();
    let info = wait_job(&survivor, job.id, Duration::from_secs(60)).await;
    assert_eq!(info.state, JobState::Cancelled, "{info:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = survivor.job_tasks(job.id).await.unwrap();
        let ended = tasks.iter().all(|t| !matches!(t.state, TaskState::Running | TaskState::Assigned));
        let left = leftovers_under(&mesh_dir);
        let cgroups: Vec<String> = workload_cgroups();
        let states: Vec<String> = (0..mesh.nodes.len())
            .filter(|i| *i != victim)
            .flat_map(|i| std::fs::read_dir(mesh.nodes[i].dir.join("runc")).into_iter().flatten())
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect();
        if ended
            && left.is_empty()
            && states.is_empty()
            && cgroups.iter().all(|c| c.contains(&victim_scope(&mesh, victim)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after cancel: tasks ended {ended}; processes and mounts {left:?}; runtime state {states:?}; cgroups {cgroups:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The cgroup scope name of node `i` (`node-<short id>`): the killed node's scope keeps its
/// workloads' cgroups until it restarts, as for processes.
fn victim_scope(mesh: &Mesh, i: usize) -> String {
    format!("node-{}", mesh.nodes[i].id.short())
}

/// `falak up` as a user who is not root, the capsule applied with a tag through the CLI (which
/// pins the digest): the nodes run the containers rootless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_runs_a_container_job() {
    use super::isolation::{Workspace, unprivileged_user};
    let registry = Registry::start().unwrap();
    let ws = Workspace::new(unprivileged_user());
    let image = push_image(&registry, &ws.cwd);
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0", "--insecure-registry", &registry.addr]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(180)).await;
    ws.write("data/greeting.txt", "mounted\n");
    ws.write(
        "boxed.yaml",
        &format!(
            "name: boxed\nkind: container\nimage: {image}\ncommand: [\"sh\", \"-c\", \"echo task $FALAK_TASK_INDEX as $(id -u): $(cat /etc/app.conf) $(cat /data/greeting.txt); touch /etc/mine; touch /data/x 2>/dev/null || echo data is read-only\"]\n\
             mounts: [{{ source: ./data, path: /data }}]\nplacement: {{ strategy: spread }}\n"
        ),
    );
    let applied = ws.run(&["capsule", "apply", "-f", "boxed.yaml"], Duration::from_secs(60)).await;
    assert!(applied.contains("capsule boxed version 1 applied"), "{applied}");
    let result = ws.run(&["job", "submit", "boxed", "--tasks", "6", "--wait"], Duration::from_secs(180)).await;
    for i in 0..6 {
        assert!(result.contains(&format!("task {i} as 0: from the image mounted")), "task {i}:\n{result}");
    }
    assert_eq!(result.matches("data is read-only").count(), 6, "{result}");
    mesh.stop_within(Duration::from_secs(30)).await;
}
