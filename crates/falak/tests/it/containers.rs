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

/// The command line of the container that runs until stopped (`sleep 600`).
const SLEEPER: &[u8] = b"sleep\x00600\x00";

/// `falak up` as a user who is not root, the capsule applied with a tag through the CLI (which
/// pins the digest): the nodes run the containers rootless. `kill -9` of a node running a
/// container leaves it running (no cgroup holds it); the node, restarted by `falak up
/// --restart`, deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_runs_a_container_job() {
    use super::isolation::{Workspace, unprivileged_user};
    let registry = Registry::start().unwrap();
    let user = unprivileged_user();
    // SAFETY: geteuid has no preconditions.
    let uid = user.as_ref().map_or_else(|| unsafe { libc::geteuid() }, |u| u.uid);
    let ws = Workspace::new(user);
    let image = push_image(&registry, &ws.cwd);
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0", "--restart", "--insecure-registry", &registry.addr]);
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

    // A container that runs until stopped: its node is killed, and deletes it when restarted.
    ws.write("forever.yaml", &format!("name: forever\nkind: container\nimage: {image}\ncommand: [sleep, \"600\"]\n"));
    ws.run(&["capsule", "apply", "-f", "forever.yaml"], Duration::from_secs(60)).await;
    ws.run(&["job", "submit", "forever", "--tasks", "1"], Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleeping = loop {
        if let Some(pid) = processes_of(uid, SLEEPER).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "the container never started\n{}", mesh.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let node = node_of_container(sleeping);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(node as libc::pid_t, libc::SIGKILL) }, 0);
    while processes_of(uid, SLEEPER).contains(&sleeping) {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the killed node's container still runs\n{}",
            mesh.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mesh.stop_within(Duration::from_secs(30)).await;
    gone_soon(|| processes_of(uid, SLEEPER), "containers left after the mesh stopped").await;
}

/// Push the test image of container functions: busybox and `/bin/serve` (the fixture server).
fn push_server_image(registry: &Registry, dir: &Path) -> String {
    let layers = [busybox_layer().unwrap(), falak_bench::registry::serve_layer().unwrap()];
    build_layout(&dir.join("served"), "v1", &layers).unwrap();
    push(&dir.join("served"), "v1", registry, "served").unwrap();
    format!("{}/served:v1", registry.addr)
}

/// POST `body` to `/fn/{name}/hi` through `api`, retried while the mesh is still starting an
/// instance (`429`, `503`) for up to a minute; the status and the body.
async fn invoke_until_served(http: &reqwest::Client, api: &str, name: &str, body: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = http
            .post(format!("{api}/fn/{name}/hi"))
            .body(body.to_owned())
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let (status, text) = match sent {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        if status == 200 || Instant::now() >= deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Functions with `runtime: container` on three real nodes: one serves on its socket with no
/// network (`network: none`), one on `$PORT` on the node's network; each answers through every
/// node. `kill -9` of the node with the socket function's instance: the next request is served
/// by another node, and the killed node, restarted, leaves no container behind. Removing the
/// functions leaves no process, mount or cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_functions_serve_on_their_socket_or_port_survive_a_killed_node_and_leave_nothing() {
    let registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let image = push_server_image(&registry, work.path());
    let options = MeshOptions { insecure_registries: vec![registry.addr.clone()], ..MeshOptions::new(3) };
    let mesh_dir = work.path().join("mesh");
    let mut mesh = Mesh::start(binary(), &mesh_dir, &options).unwrap();
    mesh.wait_ready(Duration::from_secs(90)).await.unwrap();
    mesh.wait_all_healthy(Duration::from_secs(60)).await.unwrap();
    let client = mesh.nodes[0].client.clone();
    let pulled = client.pull_image(&image).await.unwrap();
    let pinned = format!("{image}@{}", pulled.digest);
    let function = |name: &str, network: &str, command: &str| {
        let text = format!(
            "name: {name}\nkind: function\nruntime: container\nimage: \"{pinned}\"\ncommand: {command}\n\
             network: {network}\nobservers: 3\nscaling: {{ max_instances: 2, concurrency: 4, idle_timeout: 5m }}\n\
             resources: {{ memory: 64Mi }}\n"
        );
        falak_core::function::FunctionDocument::parse(&text).unwrap()
    };
    let deployed = client.deploy_function(&function("sock", "none", "[/bin/serve, socket]")).await.unwrap();
    assert_eq!((deployed.artifact, deployed.image.as_deref()), (None, Some(pinned.as_str())), "{deployed:?}");
    client.deploy_function(&function("port", "host", "[/bin/sh, -c, \"exec /bin/serve port\"]")).await.unwrap();

    let http = mesh.http();
    for node in &mesh.nodes {
        for name in ["sock", "port"] {
            let (status, body) = invoke_until_served(&http, &node.api, name, "x").await;
            assert_eq!(status, 200, "{name} through {}: {body}\n{}", node.name, node.log_tail(30));
            // The container's hostname and its user (the image's: root, uid 0).
            assert!(body.starts_with("hello from falak uid 0 instance "), "{name}: {body}");
            assert!(body.ends_with(" POST /hi body=x\n"), "{name}: {body}");
        }
    }

    // Without the node's network there is no `PORT`: a server that wants one cannot start, and
    // the caller is told where its output is.
    client.deploy_function(&function("noport", "none", "[/bin/serve, port]")).await.unwrap();
    let sent = http.post(format!("{}/fn/noport", mesh.nodes[0].api)).timeout(Duration::from_secs(60)).send().await;
    let response = sent.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(status == 502 && text.contains("could not start") && text.contains("its output is in"), "{status} {text}");
    client.remove_function("noport").await.unwrap();

    // kill -9 of the node running the socket function's instance.
    let instances = client.function_instances("sock").await.unwrap();
    let victim_name = instances.first().map(|i| i.node_name.clone()).expect("sock has an instance");
    let victim = mesh.nodes.iter().position(|n| n.name == victim_name).unwrap();
    mesh.kill9(victim).unwrap();
    let killed = Instant::now();
    let survivor = (victim + 1) % mesh.nodes.len();
    let (status, body) = invoke_until_served(&http, &mesh.nodes[survivor].api, "sock", "after").await;
    assert_eq!(status, 200, "after the kill: {body}\n{}", mesh.nodes[survivor].log_tail(30));
    assert!(body.ends_with(" POST /hi body=after\n"), "{body}");
    assert!(killed.elapsed() < Duration::from_secs(15), "answered {:?} after the kill", killed.elapsed());

    // The restarted node removes what its killed run left; removing the functions stops the
    // rest. Then no container process, overlay mount, cgroup or bundle is left anywhere.
    mesh.spawn(victim).unwrap();
    mesh.wait_ready(Duration::from_secs(90)).await.unwrap();
    let client = mesh.nodes[survivor].client.clone();
    client.remove_function("sock").await.unwrap();
    client.remove_function("port").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers_under(&mesh_dir);
        let cgroups = workload_cgroups();
        let bundles: Vec<String> = mesh
            .nodes
            .iter()
            .flat_map(|n| std::fs::read_dir(n.dir.join("functions")).into_iter().flatten().flatten())
            .flat_map(|d| std::fs::read_dir(d.path().join("containers")).into_iter().flatten().flatten())
            .map(|e| e.path().display().to_string())
            .collect();
        if left.is_empty() && cgroups.is_empty() && bundles.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after fn rm: processes and mounts {left:?}; cgroups {cgroups:?}; bundles {bundles:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Processes running `/bin/serve` (the fixture server) owned by `uid`: their pids.
fn servers_of(uid: u32) -> Vec<u32> {
    processes_of(uid, b"/bin/serve\0")
}

/// Live processes owned by `uid` whose command line starts with `prefix` (arguments end in NUL).
fn processes_of(uid: u32, prefix: &[u8]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let owner = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next());
        let zombie = status.lines().any(|l| l.starts_with("State:") && l.contains('Z'));
        if cmdline.starts_with(prefix) && owner == Some(&uid.to_string()) && !zombie {
            found.push(pid);
        }
    }
    found
}

/// Wait up to 5 s for `find` to list nothing (a container killed a moment ago may still be
/// on its way out); else fail with `what`.
async fn gone_soon(find: impl Fn() -> Vec<u32>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = find();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node whose runtime runs the container whose init is `pid`: its parent is the runtime
/// (`runc`), whose parent is the node (`falak node`).
fn node_of_container(pid: u32) -> u32 {
    let cmdline = |pid: u32| {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
    };
    let runtime = parent_of(pid).unwrap_or_else(|| panic!("container {pid} has no parent"));
    assert!(
        cmdline(runtime).contains(" run --keep "),
        "the parent of container {pid} is not its runtime: {}",
        cmdline(runtime)
    );
    let node = parent_of(runtime).unwrap_or_else(|| panic!("runtime {runtime} has no parent"));
    assert!(cmdline(node).contains(" node "), "the parent of runtime {runtime} is not a node: {}", cmdline(node));
    node
}

/// The parent of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `falak up` as a user who is not root: a container function deployed with a tag through the
/// CLI (which pins the digest) answers `falak fn invoke`, rootless. `kill -9` of the node
/// running the instance leaves its container running (no cgroup holds it); the node, restarted
/// by `falak up --restart`, deletes it. Stopping the mesh leaves no container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_runs_a_container_function() {
    use super::isolation::{Workspace, unprivileged_user};
    let registry = Registry::start().unwrap();
    let user = unprivileged_user();
    // SAFETY: geteuid has no preconditions.
    let uid = user.as_ref().map_or_else(|| unsafe { libc::geteuid() }, |u| u.uid);
    let ws = Workspace::new(user);
    let image = push_server_image(&registry, &ws.cwd);
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0", "--restart", "--insecure-registry", &registry.addr]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(180)).await;
    ws.write(
        "served.yaml",
        &format!("name: served\nkind: function\nruntime: container\nimage: {image}\nargs: [/bin/serve, socket]\nnetwork: none\n"),
    );
    let deployed = ws.run(&["fn", "deploy", "-f", "served.yaml"], Duration::from_secs(60)).await;
    assert!(deployed.contains("function served version 1 deployed (image "), "{deployed}");
    assert!(deployed.contains("@sha256:"), "the CLI pinned the tag: {deployed}");
    let answer = ws.run(&["fn", "invoke", "served", "-d", "rootless"], Duration::from_secs(60)).await;
    assert!(answer.starts_with("hello from falak uid 0 instance "), "{answer}");
    assert!(answer.contains("body=rootless"), "{answer}");
    let shown = ws.run(&["fn", "show", "served"], Duration::from_secs(30)).await;
    assert!(shown.contains("runtime") && shown.contains("container") && shown.contains("@sha256:"), "{shown}");

    // The instance's container: its parent is the runtime, whose parent is the node.
    let servers = servers_of(uid);
    assert_eq!(servers.len(), 1, "one instance runs: {servers:?}");
    let node = node_of_container(servers[0]);
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(node as libc::pid_t, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while servers_of(uid).contains(&servers[0]) {
        assert!(
            Instant::now() < deadline,
            "the killed node's container still runs after its restart\n{}",
            mesh.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = ws.run(&["fn", "invoke", "served", "-d", "again"], Duration::from_secs(60)).await;
    assert!(answer.contains("body=again"), "{answer}");
    mesh.stop_within(Duration::from_secs(30)).await;
    gone_soon(|| servers_of(uid), "containers left after the mesh stopped").await;
}
