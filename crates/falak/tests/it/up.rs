//! `falak up` end to end: real node processes on loopback, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use falak_api::Client;
use tokio::process::{Child, Command};

/// A `falak up` run with its output in files (read them to explain a failure).
struct Up {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    fn start(dir: &Path, run: &str, args: &[&str]) -> Up {
        let stdout = dir.join(format!("{run}.stdout"));
        let stderr = dir.join(format!("{run}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_falak"))
            .arg("up")
            .args(args)
            .current_dir(dir)
            .env_remove("FALAK_API")
            .env_remove("FALAK_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Up { child, stdout, stderr }
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- stdout ---\n{}--- stderr ---\n{}", read(&self.stdout), read(&self.stderr))
    }

    /// Wait until stdout contains `text`; panics with the output when `falak up` exits first.
    async fn wait_for_output(&mut self, text: &str, within: Duration) {
        let waiting = async {
            loop {
                if std::fs::read_to_string(&self.stdout).unwrap_or_default().contains(text) {
                    return;
                }
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("falak up exited ({status}) before printing {text:?}\n{}", self.output());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(within, waiting).await.is_err() {
            panic!("falak up did not print {text:?} within {within:?}\n{}", self.output());
        }
    }

    /// SIGTERM, then the exit status within 15 s.
    async fn terminate(&mut self) -> ExitStatus {
        signal(self.pid(), libc::SIGTERM);
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("falak up did not exit within 15s of SIGTERM\n{}", self.output()),
        }
    }
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills node processes a failed test leaves behind.
struct Reaper(Vec<u64>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.iter().filter(|pid| alive(**pid)) {
            signal(-(*pid as i32), libc::SIGKILL);
            signal(*pid as i32, libc::SIGKILL);
        }
    }
}

fn read_mesh(data: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data.join("mesh.json")).unwrap()).unwrap()
}

fn node_pids(mesh: &serde_json::Value) -> Vec<u64> {
    mesh["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_a_ready_mesh_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let data_arg = data.to_str().unwrap();
    let mut up = Up::start(dir.path(), "up", &["--nodes", "3", "--base-port", "0", "--data-dir", data_arg]);
    up.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(90)).await;

    let mesh = read_mesh(&data);
    let _reaper = Reaper(node_pids(&mesh));
    assert_eq!(mesh["pid"].as_i64(), Some(i64::from(up.pid())));
    let nodes = mesh["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{mesh:#}");
    for node in nodes {
        let token = std::fs::read_to_string(mesh["token_file"].as_str().unwrap()).unwrap();
        let ca = std::fs::read_to_string(mesh["ca_cert"].as_str().unwrap()).unwrap();
        let client = Client::new(node["api_url"].as_str().unwrap())
            .unwrap()
            .with_ca(&ca)
            .unwrap()
            .with_token(Some(token.trim().to_owned()));
        let readiness = client.ready().await.unwrap_or_else(|e| panic!("{}: {e}\n{}", node["name"], up.output()));
        assert!(readiness.ready, "{readiness:?}");
        assert!(alive(node["pid"].as_u64().unwrap()));
    }
    assert!(mesh.get("join_token").is_none(), "mesh.json carries no join token (falak node admit makes them)");

    let status = up.terminate().await;
    assert!(status.success(), "falak up exited {status}\n{}", up.output());
    for pid in node_pids(&mesh) {
        assert!(!alive(pid), "node pid {pid} survived\n{}", up.output());
    }
    assert!(!data.join("mesh.json").exists(), "mesh.json is removed on stop");
    assert!(data.join("node-1/node.yaml").exists(), "the data dir stays (cleanup is off)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mesh_keeps_its_ledger_and_runs_the_demo_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let args = ["--demo", "--nodes", "3", "--base-port", "0", "--data-dir", data.to_str().unwrap()];

    let mut up = Up::start(dir.path(), "first", &args);
    up.wait_for_output("demo: tasks per node:", Duration::from_secs(150)).await;
    let _reaper = Reaper(node_pids(&read_mesh(&data)));
    let out = up.output();
    assert!(out.contains("provisioned mesh local"), "{out}");
    assert!(out.contains("demo: applied capsule hello version 1"), "{out}");
    assert!(out.contains("demo: submitted job j1: 12 tasks of hello v1"), "{out}");
    for i in 0..12 {
        assert!(out.contains(&format!("task {i} of 12\n")), "{out}");
    }
    let first_mesh = read_mesh(&data);
    assert!(up.terminate().await.success(), "{}", up.output());

    // The same data dir again: same nodes and addresses, and the ledger still knows the
    // capsule and the first job.
    let mut up = Up::start(dir.path(), "second", &args);
    up.wait_for_output("demo: tasks per node:", Duration::from_secs(150)).await;
    let mesh = read_mesh(&data);
    let _reaper = Reaper(node_pids(&mesh));
    let out = up.output();
    assert!(out.contains("restarting mesh local"), "{out}");
    assert!(out.contains("demo: capsule hello version 1 is already applied"), "{out}");
    assert!(out.contains("demo: submitted job j2:"), "{out}");
    for (before, after) in first_mesh["nodes"].as_array().unwrap().iter().zip(mesh["nodes"].as_array().unwrap()) {
        assert_eq!((&before["id"], &before["api_url"]), (&after["id"], &after["api_url"]));
    }
    assert!(up.terminate().await.success(), "{}", up.output());
}

/// Passes with or without the daemon: a node that cannot start (its API port is taken, or
/// the daemon is not there) fails `falak up`, which shows the node's log and leaves nothing
/// running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_start_fails_up_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut up =
        Up::start(dir.path(), "up", &["--nodes", "1", "--base-port", &port, "--data-dir", data.to_str().unwrap()]);
    let status = match tokio::time::timeout(Duration::from_secs(120), up.child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("falak up did not give up\n{}", up.output()),
    };
    let out = up.output();
    assert_eq!(status.code(), Some(1), "{out}");
    let stdout = std::fs::read_to_string(&up.stdout).unwrap();
    let pid: u64 = stdout
        .split_once("started node-1 (pid ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(pid, _)| pid.parse().ok())
        .unwrap_or_else(|| panic!("no node pid printed\n{out}"));
    assert!(!alive(pid), "node pid {pid} survived\n{out}");
    assert!(out.contains("--- last lines of ") && out.contains("node-1/node.log"), "{out}");
    assert!(out.contains("exited before it was ready") || out.contains("not ready after"), "{out}");
    assert!(!data.join("mesh.json").exists(), "{out}");
    drop(taken);
}
