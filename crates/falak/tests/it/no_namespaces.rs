//! Nodes that cannot create namespaces at all, for real: each runs in a user namespace whose
//! namespace limits are 0 (`user.max_user_namespaces`, `user.max_mnt_namespaces`,
//! `user.max_net_namespaces`: counted per user namespace, and binding every namespace created
//! below it), so the node's probe fails as it does on a host that refuses unprivileged user
//! namespaces. The node says so at start, a job or service that asks for a network of its own is
//! refused when submitted (nothing written), work on the host's network still runs, and in a
//! mesh where another node can, the work goes there and `falak explain` says why not the other.
//!
//! The wrapper: `unshare --user --map-current-user --keep-caps` gives the shell, as the test's
//! user, every capability in the new user namespace (kept across its `exec`), enough to write
//! the limits of that namespace; `setpriv` then drops them all before `exec`ing falak. Run as
//! root, the test first drops to the unprivileged user (`isolation::unprivileged_user`).

use std::time::Duration;

use super::isolation::{Workspace, unprivileged_user};
use super::up::{Reaper, Up, node_pids, read_mesh};

const RESTRICT: &str = "echo 0 > /proc/sys/user/max_net_namespaces && echo 0 > /proc/sys/user/max_mnt_namespaces \
     && echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --inh-caps=-all --ambient-caps=-all -- \"$@\"";

/// The wrapper that runs falak where no namespace can be created.
fn restricted() -> [&'static str; 7] {
    ["unshare", "--user", "--map-current-user", "--keep-caps", "sh", "-c", RESTRICT]
}

/// `falak ARGS` as the workspace's user, in a user namespace whose namespace limits are 0.
fn restricted_falak(ws: &Workspace, args: &[&str]) -> tokio::process::Command {
    let mut wrapper = restricted().to_vec();
    wrapper.push("sh"); // `$0` of the script
    ws.falak_through(&wrapper, args)
}

/// Run `falak ARGS` (outside the restriction: the CLI only talks to the API) to the end.
async fn output(ws: &Workspace, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), ws.falak(args).output())
        .await
        .unwrap_or_else(|_| panic!("falak {args:?} did not finish within 60s"))
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `falak nodes -o json` until `check` holds for it (within 60 s).
async fn wait_for_nodes(ws: &Workspace, what: &str, check: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stdout, _) = output(ws, &["nodes", "-o", "json"]).await;
        let nodes: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap_or_default();
        if check(&nodes) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within 60s; nodes: {stdout}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn namespaces_of<'a>(nodes: &'a [serde_json::Value], name: &str) -> Option<&'a str> {
    nodes.iter().find(|n| n["name"] == name)?["namespaces"].as_str()
}

const SEALED: &str = "name: sealed\nkind: process\ncommand: [\"/bin/sh\", \"-c\", \"echo sealed $FALAK_TASK_INDEX\"]\n\
                      resources: { cpu: 100m, memory: 32Mi }\n";
const SHARED: &str = "name: shared\nkind: process\ncommand: [\"/bin/sh\", \"-c\", \"echo shared $FALAK_TASK_INDEX\"]\n\
                      resources: { cpu: 100m, memory: 32Mi }\nnetwork: host\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_namespaces_a_private_network_is_refused_when_submitted_and_host_network_work_runs() {
    let ws = Workspace::new(unprivileged_user());
    let mut mesh = Up::spawn(restricted_falak(&ws, &["up", "--nodes", "2", "--base-port", "0"]), &ws.cwd, "up");
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(120)).await;
    let _reaper = Reaper(node_pids(&read_mesh(&ws.cwd.join(".falak"))));

    // Each node says so at start: in its log, why and what to change; `falak up` and `falak
    // nodes` name the nodes.
    for node in ["node-1", "node-2"] {
        let log = std::fs::read_to_string(ws.cwd.join(format!(".falak/{node}/node.log"))).unwrap();
        assert!(log.contains("namespaces unavailable"), "{node} found no namespaces:\n{log}");
        assert!(
            log.contains("namespaces: cannot create them")
                && log.contains("user.max_user_namespaces")
                && log.contains("this node takes no capsule with network \"none\""),
            "{node}'s log says what is missing and what to change:\n{log}"
        );
    }
    let out = mesh.output();
    assert!(
        out.contains("note: node-1, node-2 cannot create namespaces: they cannot run capsules with `network: none`"),
        "{out}"
    );
    let (ok, nodes, _) = output(&ws, &["nodes"]).await;
    assert!(ok && nodes.matches("unavailable").count() == 2, "{nodes}");

    // A capsule that asks for a network of its own (the default) may be stored, but a job or a
    // service of it is refused with what to change, and nothing is written.
    ws.write("sealed.yaml", SEALED);
    ws.run(&["capsule", "apply", "-f", "sealed.yaml"], Duration::from_secs(30)).await;
    let (ok, stdout, stderr) = output(&ws, &["job", "submit", "sealed", "--tasks", "2", "--wait"]).await;
    assert!(!ok, "the job was refused:\n{stdout}{stderr}");
    for words in [
        "capsule sealed v1 asks for a network of its own (network: none, the default)",
        "node-1, node-2: namespaces unavailable",
        "nothing was written",
        "user.max_user_namespaces",
        "run the nodes as root",
        "set `network: host` in the capsule",
    ] {
        assert!(stderr.contains(words), "the refusal says {words:?}:\n{stderr}");
    }
    ws.write("sealed-service.yaml", "name: sealed-svc\ncapsule: sealed\nreplicas: 1\n");
    let (ok, _, stderr) = output(&ws, &["service", "apply", "-f", "sealed-service.yaml"]).await;
    assert!(!ok && stderr.contains("asks for a network of its own"), "the service was refused:\n{stderr}");
    let jobs = ws.run(&["job", "list"], Duration::from_secs(30)).await;
    assert!(jobs.starts_with("no jobs"), "nothing was written:\n{jobs}");
    let services = ws.run(&["service", "list"], Duration::from_secs(30)).await;
    assert!(!services.contains("sealed-svc"), "nothing was written:\n{services}");

    // Work on the host's network still runs, confined by the rest of the sandbox.
    ws.write("shared.yaml", SHARED);
    ws.run(&["capsule", "apply", "-f", "shared.yaml"], Duration::from_secs(30)).await;
    let result = ws.run(&["job", "submit", "shared", "--tasks", "4", "--wait"], Duration::from_secs(90)).await;
    for i in 0..4 {
        assert!(result.contains(&format!("shared {i}")), "task {i} ran:\n{result}");
    }
    // So do functions: they have no `network` field, and their instances share the node's
    // network where it has no namespaces (docs/design/runtime-host.md).
    ws.write("echo-fn/echo.sh", "echo \"function on $(hostname)\"\n");
    ws.write(
        "echo-fn.yaml",
        "name: echo-fn\nkind: function\nruntime: exec\ncommand: [\"/bin/sh\", \"./echo.sh\"]\nsource: ./echo-fn\n",
    );
    ws.run(&["fn", "deploy", "-f", "echo-fn.yaml"], Duration::from_secs(120)).await;
    let answer = ws.run(&["fn", "invoke", "echo-fn"], Duration::from_secs(60)).await;
    assert!(answer.contains("function on"), "{answer}");
    mesh.stop_within(Duration::from_secs(20)).await;
}

/// A node of a mesh that starts again where it cannot create namespaces: its record says so,
/// a job that asks for a network of its own still runs (on the other node), and `falak
/// explain` says why not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_needs_namespaces_goes_to_the_node_that_has_them_and_explain_says_why() {
    let ws = Workspace::new(unprivileged_user());
    let mut mesh = ws.up(&["--nodes", "2", "--base-port", "0"]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(120)).await;
    let mesh_json = read_mesh(&ws.cwd.join(".falak"));
    let mut reaper = Reaper(node_pids(&mesh_json));
    wait_for_nodes(&ws, "both nodes declare user namespaces", |nodes| {
        ["node-1", "node-2"].iter().all(|n| namespaces_of(nodes, n) == Some("user"))
    })
    .await;

    // node-2 stops, and its user starts it again by hand where namespaces are refused.
    let pid = mesh_json["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node-2").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: a signal to a node process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopped = tokio::time::Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(tokio::time::Instant::now() < stopped, "node-2 stopped on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its pid may be another process's now; the one started below is killed when dropped.
    reaper.0.retain(|p| *p != pid as u64);
    let log = std::fs::File::create(ws.cwd.join("node-2-restricted.log")).unwrap();
    let mut node_2 = restricted_falak(&ws, &["node", "-c", ".falak/node-2/node.yaml"])
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_nodes(&ws, "node-2 declares it has no namespaces", |nodes| {
        namespaces_of(nodes, "node-2") == Some("unavailable") && nodes.iter().all(|n| n["state"] == "HEALTHY")
    })
    .await;

    // Accepted: node-1 can. Every task runs there.
    ws.write("sealed.yaml", SEALED);
    ws.run(&["capsule", "apply", "-f", "sealed.yaml"], Duration::from_secs(30)).await;
    let result = ws.run(&["job", "submit", "sealed", "--tasks", "4", "--wait"], Duration::from_secs(90)).await;
    for i in 0..4 {
        assert!(result.contains(&format!("sealed {i}")), "task {i} ran:\n{result}");
    }
    let status = ws.run(&["job", "status", "j1"], Duration::from_secs(30)).await;
    assert!(status.contains("node-1") && !status.contains("node-2"), "every task ran on node-1:\n{status}");
    let explain = ws.run(&["explain", "j1-t0"], Duration::from_secs(30)).await;
    assert!(
        explain.lines().any(|l| l.contains("node-2")
            && l.contains("does not fit: needs a network of its own (network: none), node cannot create namespaces")),
        "explain says why not node-2:\n{explain}"
    );

    mesh.stop_within(Duration::from_secs(20)).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), node_2.wait()).await;
    let _ = node_2.start_kill();
}
