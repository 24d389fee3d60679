//! Issue 11's process capsules that carry their code: `falak capsule apply` bundles `source:`,
//! stores the bundle on the node it talks to, and every other node that runs a task fetches it
//! from a peer, verifies it and starts each attempt in a copy of it. As root and as a user who
//! is not, on five nodes.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use super::isolation::{TestUser, Workspace, unprivileged_user};

const TASKS: usize = 15;

/// Appends to a file it shipped with and prints it: every attempt must see the shipped line
/// and its own, never another attempt's.
const RUN_SH: &str = "#!/bin/sh\nset -e\necho \"task $FALAK_TASK_INDEX\" >> data/seen.txt\n\
                      printf 'ran %s:' \"$FALAK_TASK_INDEX\"; tr '\\n' ' ' < data/seen.txt; echo\n";

async fn a_process_job_runs_code_its_nodes_never_had(user: Option<TestUser>) {
    let ws = Workspace::new(user);
    let mut mesh = ws.up(&["--nodes", "5", "--base-port", "0"]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(180)).await;
    let script = ws.write("app/run.sh", RUN_SH);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ws.write("app/data/seen.txt", "shipped\n");
    ws.write(
        "tool.yaml",
        "name: tool\nkind: process\nsource: ./app\ncommand: [\"./run.sh\"]\n\
         placement: { strategy: spread, max_attempts: 1 }\n",
    );
    let applied = ws.run(&["capsule", "apply", "-f", "tool.yaml"], Duration::from_secs(60)).await;
    assert!(applied.contains("capsule tool version 1 applied"), "{applied}");
    let shown = ws.run(&["capsule", "show", "tool"], Duration::from_secs(30)).await;
    assert!(shown.contains("code:       bundle "), "{shown}");
    // From here the only copy of the code is the bundle the CLI's node stored.
    std::fs::remove_dir_all(ws.cwd.join("app")).unwrap();

    let tasks = TASKS.to_string();
    let result = ws.run(&["job", "submit", "tool", "--tasks", &tasks, "--wait"], Duration::from_secs(180)).await;
    for i in 0..TASKS {
        assert!(result.contains(&format!("ran {i}:shipped task {i} \n")), "task {i}'s own copy:\n{result}");
    }
    let status = ws.run(&["job", "status", "j1", "-o", "json"], Duration::from_secs(30)).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let nodes: std::collections::BTreeSet<String> =
        status["tasks"].as_array().unwrap().iter().map(|t| t["node"]["name"].as_str().unwrap().to_owned()).collect();
    assert!(nodes.len() >= 3, "the tasks spread over several nodes: {nodes:?}");
    // Each of those nodes holds the bundle now, fetched from a peer (only one was sent it).
    for node in &nodes {
        let blobs = ws.cwd.join(".falak").join(node).join("artifacts/blobs");
        let held = std::fs::read_dir(&blobs).map(|d| d.flatten().count()).unwrap_or(0);
        assert!(held >= 1, "{node} holds the code it ran ({})", blobs.display());
    }

    // Code the node was never given is refused at apply, naming what to do.
    let missing = "0".repeat(64);
    ws.write("orphan.yaml", &format!("name: orphan\nkind: process\nartifact: \"{missing}\"\ncommand: [\"./x\"]\n"));
    let refused = ws.falak(&["capsule", "apply", "-f", "orphan.yaml"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("bundle {missing} is not stored on this node; upload it first")), "{stderr}");
    mesh.stop_within(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_job_runs_code_its_nodes_never_had_as_this_user() {
    a_process_job_runs_code_its_nodes_never_had(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_job_runs_code_its_nodes_never_had_as_an_unprivileged_user() {
    a_process_job_runs_code_its_nodes_never_had(unprivileged_user()).await;
}
