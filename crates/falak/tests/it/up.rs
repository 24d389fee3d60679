//! `falak up` end to end: real node processes on loopback, stopped with SIGTERM, killed and
//! started again by hand or by `falak up --restart`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use falak_api::Client;
use tokio::process::{Child, Command};

/// A `falak up` run with its output in files (read them to explain a failure).
pub(crate) struct Up {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    /// `falak up ARGS` in `dir`; it records its current mesh under `dir/config` (never in the
    /// user's own config dir).
    fn start(dir: &Path, run: &str, args: &[&str]) -> Up {
        let mut command = Command::new(env!("CARGO_BIN_EXE_falak"));
        command
            .arg("up")
            .args(args)
            .current_dir(dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env_remove("FALAK_API")
            .env_remove("FALAK_TOKEN")
            .env_remove("FALAK_MESH")
            .stdin(Stdio::null());
        Up::spawn(command, dir, run)
    }

    /// Start `command` (a `falak up`), its stdout and stderr in `dir/RUN.stdout` and `.stderr`.
    pub(crate) fn spawn(mut command: Command, dir: &Path, run: &str) -> Up {
        let stdout = dir.join(format!("{run}.stdout"));
        let stderr = dir.join(format!("{run}.stderr"));
        let child = command
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Up { child, stdout, stderr }
    }

    /// SIGTERM, then wait up to `within` for it to exit, however it exits.
    pub(crate) async fn stop_within(&mut self, within: Duration) {
        self::signal(self.pid(), libc::SIGTERM);
        let _ = tokio::time::timeout(within, self.child.wait()).await;
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    pub(crate) fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("--- stdout ---\n{}--- stderr ---\n{}", read(&self.stdout), read(&self.stderr))
    }

    /// Wait until stdout contains `text`; panics with the output when `falak up` exits first.
    pub(crate) async fn wait_for_output(&mut self, text: &str, within: Duration) {
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
        self.stop(libc::SIGTERM).await
    }

    /// `signal` (SIGTERM, or SIGINT as a terminal's Ctrl-C), then the exit status within 15 s.
    async fn stop(&mut self, signal: i32) -> ExitStatus {
        self::signal(self.pid(), signal);
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("falak up did not exit within 15s of signal {signal}\n{}", self.output()),
        }
    }

    /// Wait until `data/mesh.json` shows `what` (`check` holds), and return it; panics with
    /// the output when `falak up` exits first or the time is up.
    async fn wait_for_mesh(
        &mut self,
        data: &Path,
        what: &str,
        within: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let waiting = async {
            loop {
                let text = std::fs::read_to_string(data.join("mesh.json")).unwrap_or_default();
                last = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                if check(&last) {
                    return last.clone();
                }
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("falak up exited ({status}) before mesh.json showed {what}\n{}", self.output());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(within, waiting).await {
            Ok(mesh) => mesh,
            Err(_) => panic!("mesh.json did not show {what} within {within:?}: {last:#}\n{}", self.output()),
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
pub(crate) struct Reaper(pub(crate) Vec<u64>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.iter().filter(|pid| alive(**pid)) {
            signal(-(*pid as i32), libc::SIGKILL);
            signal(*pid as i32, libc::SIGKILL);
        }
    }
}

pub(crate) fn read_mesh(data: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data.join("mesh.json")).unwrap()).unwrap()
}

pub(crate) fn node_pids(mesh: &serde_json::Value) -> Vec<u64> {
    mesh["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect()
}

/// A client for node `index` of the mesh, with the mesh's CA and admin token.
fn node_client(mesh: &serde_json::Value, index: usize) -> Client {
    let token = std::fs::read_to_string(mesh["token_file"].as_str().unwrap()).unwrap();
    let ca = std::fs::read_to_string(mesh["ca_cert"].as_str().unwrap()).unwrap();
    Client::new(mesh["nodes"][index]["api_url"].as_str().unwrap())
        .unwrap()
        .with_ca(&ca)
        .unwrap()
        .with_token(Some(token.trim().to_owned()))
}

/// Wait until the node answers `/readyz` with ready.
async fn wait_ready(client: &Client, within: Duration, up: &Up) {
    let waiting = async {
        loop {
            if client.ready().await.is_ok_and(|r| r.ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(within, waiting).await.is_err() {
        panic!("{} was not ready within {within:?}\n{}", client.base_url(), up.output());
    }
}

/// `falak node -c CONFIG`, as a user starts a node again by hand; its output in `dir/hand.log`.
fn start_node_by_hand(dir: &Path, config: &Path) -> Child {
    let log = std::fs::File::create(dir.join("hand.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_falak"))
        .arg("node")
        .arg("-c")
        .arg(config)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
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

/// A node killed with `kill -9` and started again by hand, as `falak up` tells, is followed:
/// `mesh.json` drops the dead pid and lists the new one, `falak up` keeps running (and
/// `mesh.json` stays) while only that node runs, and Ctrl-C stops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_by_hand_is_followed_and_stopped_with_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let mut up =
        Up::start(dir.path(), "up", &["--nodes", "2", "--base-port", "0", "--data-dir", data.to_str().unwrap()]);
    up.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(90)).await;
    let pids = node_pids(&read_mesh(&data));
    let mut reaper = Reaper(pids.clone());

    signal(pids[1] as i32, libc::SIGKILL);
    let mesh = up
        .wait_for_mesh(&data, "node-2 without a pid", Duration::from_secs(5), |m| m["nodes"][1]["pid"].is_null())
        .await;
    assert_eq!(mesh["nodes"][1]["state"], "exited", "{mesh:#}");
    assert_eq!(mesh["nodes"][0]["pid"], pids[0], "{mesh:#}");
    let config = data.join("node-2/node.yaml");
    // The command names the binary that runs (its path: it is not on the tests' PATH).
    up.wait_for_output(&format!(" node -c {}` and `falak up` follows it", config.display()), Duration::from_secs(5))
        .await;

    let mut by_hand = start_node_by_hand(dir.path(), &config);
    let hand_pid = u64::from(by_hand.id().unwrap());
    reaper.0.push(hand_pid);
    let started = std::time::Instant::now();
    let mesh = up
        .wait_for_mesh(&data, "node-2 started by hand", Duration::from_secs(3), |m| m["nodes"][1]["pid"] == hand_pid)
        .await;
    eprintln!("falak up followed node-2 {:?} after it was started by hand", started.elapsed());
    assert_eq!(mesh["nodes"][1]["state"], "running", "{mesh:#}");
    wait_ready(&node_client(&mesh, 1), Duration::from_secs(30), &up).await;
    up.wait_for_output(&format!("node-2 runs again (pid {hand_pid}"), Duration::from_secs(5)).await;

    // Every child of `falak up` gone, the node started by hand still runs: so does `falak up`.
    signal(pids[0] as i32, libc::SIGKILL);
    up.wait_for_mesh(&data, "node-1 without a pid", Duration::from_secs(5), |m| m["nodes"][0]["pid"].is_null()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(up.child.try_wait().unwrap().is_none(), "falak up stopped while node-2 runs\n{}", up.output());
    assert_eq!(read_mesh(&data)["nodes"][1]["pid"], hand_pid);

    let status = up.stop(libc::SIGINT).await;
    assert!(status.success(), "falak up exited {status}\n{}", up.output());
    let hand_status = match tokio::time::timeout(Duration::from_secs(5), by_hand.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => panic!("the node started by hand still runs after falak up stopped\n{}", up.output()),
    };
    assert!(hand_status.success(), "SIGTERM stops a node cleanly; it exited {hand_status}\n{}", up.output());
    assert!(!data.join("mesh.json").exists(), "mesh.json is removed once no node runs\n{}", up.output());
    assert!(!data.join("node-2/node.pid").exists(), "a node that stops removes its pid file");
}

/// `falak up --restart`: a node killed with `kill -9` is started again by `falak up` itself,
/// listed under its new pid, and serves; the stop ends the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_brings_a_killed_node_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mesh");
    let args = ["--restart", "--nodes", "1", "--base-port", "0", "--data-dir", data.to_str().unwrap()];
    let mut up = Up::start(dir.path(), "up", &args);
    up.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(90)).await;
    let first = node_pids(&read_mesh(&data))[0];
    let mut reaper = Reaper(vec![first]);

    signal(first as i32, libc::SIGKILL);
    let mesh = up
        .wait_for_mesh(&data, "node-1 under a new pid", Duration::from_secs(10), |m| {
            m["nodes"][0]["pid"].as_u64().is_some_and(|pid| pid != first)
        })
        .await;
    let second = node_pids(&mesh)[0];
    reaper.0.push(second);
    wait_ready(&node_client(&mesh, 0), Duration::from_secs(30), &up).await;
    let out = up.output();
    assert!(out.contains("restarting it in 1s (--restart)"), "{out}");
    assert!(out.contains(&format!("restarted node-1 (pid {second})")), "{out}");

    assert!(up.terminate().await.success(), "{}", up.output());
    assert!(!alive(second), "the restarted node survived\n{}", up.output());
    let out = up.output();
    assert!(out.contains(&format!("node-1 stopped (pid {second}, exit status: 0)")), "{out}");
    assert!(!data.join("mesh.json").exists(), "{out}");
}

/// A `falak` command run in `dir` as a user whose config dir is `config`, with no mesh named
/// in the environment.
async fn cli(dir: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_falak"))
        .args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("FALAK_API")
        .env_remove("FALAK_TOKEN")
        .env_remove("FALAK_CA")
        .env_remove("FALAK_MESH")
        .env_remove("FALAK_DEPLOYER_KEY")
        .stdin(Stdio::null())
        .output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("the command ends").unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The CLI finds the mesh `falak up` runs from any directory below the one it ran in, and,
/// through the current mesh `falak up` records, from anywhere; the commands it prints name the
/// binary that runs; and when nothing is found, or the current mesh is gone, it says where it
/// looked and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_mesh_from_a_subdirectory_and_from_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let (deep, elsewhere) = (project.join("src/deep"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let config = project.join("config");
    let mut up = Up::start(&project, "up", &["--nodes", "1", "--base-port", "0"]);
    up.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(90)).await;
    let data = project.join(".falak");
    let _reaper = Reaper(node_pids(&read_mesh(&data)));
    let out = up.output();
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_falak")).unwrap();
    assert!(out.contains(&format!("try:\n  {} nodes\n", exe.display())), "the try lines name this binary\n{out}");
    assert!(out.contains(&format!("export PATH=\"{}:$PATH\"", exe.parent().unwrap().display())), "{out}");
    let current = config.join("falak/current-mesh");
    assert!(out.contains(&format!("current mesh: {} (in {}", data.display(), current.display())), "{out}");
    assert_eq!(std::fs::read_to_string(&current).unwrap(), format!("{}\n", data.display()));

    // From a subdirectory of where `falak up` ran: the .falak above.
    let nodes = cli(&deep, &dir.path().join("no-config"), &["nodes"]).await;
    assert!(nodes.status.success(), "{}", stderr(&nodes));
    assert!(stdout(&nodes).contains("node-1"), "{}", stdout(&nodes));
    let current_here = cli(&deep, &config, &["mesh", "current"]).await;
    assert_eq!(stdout(&current_here), format!("{}\n", data.display()), "{}", stderr(&current_here));
    assert!(stderr(&current_here).contains("above the current directory"), "{}", stderr(&current_here));

    // From an unrelated directory: the current mesh `falak up` recorded.
    let nodes = cli(&elsewhere, &config, &["nodes"]).await;
    assert!(nodes.status.success(), "{}", stderr(&nodes));
    assert!(stdout(&nodes).contains("node-1"), "{}", stdout(&nodes));
    let current_there = cli(&elsewhere, &config, &["mesh", "current"]).await;
    assert_eq!(stdout(&current_there), format!("{}\n", data.display()));
    assert!(stderr(&current_there).contains(&format!("named in {}", current.display())), "{}", stderr(&current_there));

    // Another user config without a current mesh: nothing found, and the error says where it
    // looked and what to do; `falak mesh use` names the mesh (by the directory `falak up` ran in).
    let other = dir.path().join("other-config");
    let lost = cli(&elsewhere, &other, &["nodes"]).await;
    assert_eq!(lost.status.code(), Some(1));
    let error = stderr(&lost);
    assert!(
        error.contains(&format!("no mesh found: no .falak/mesh.json in {} or above it", elsewhere.display())),
        "{error}"
    );
    assert!(error.contains(&format!("{} does not exist", other.join("falak/current-mesh").display())), "{error}");
    assert!(error.contains("run `falak up` here, cd into a mesh directory, or `falak mesh use DIR`"), "{error}");
    let used = cli(&elsewhere, &other, &["mesh", "use", project.to_str().unwrap()]).await;
    assert!(used.status.success(), "{}", stderr(&used));
    assert_eq!(std::fs::read_to_string(other.join("falak/current-mesh")).unwrap(), format!("{}\n", data.display()));
    let nodes = cli(&elsewhere, &other, &["nodes", "-o", "json"]).await;
    assert!(nodes.status.success(), "{}", stderr(&nodes));

    // Stopped: the current mesh names a mesh that does not run. Removed: a file naming nothing.
    assert!(up.terminate().await.success(), "{}", up.output());
    let stopped = cli(&elsewhere, &config, &["nodes"]).await;
    assert_eq!(stopped.status.code(), Some(1));
    let error = stderr(&stopped);
    assert!(error.contains(&format!("the mesh in {} is not running", data.display())), "{error}");
    assert!(error.contains(&format!("(the current mesh, named in {})", current.display())), "{error}");
    std::fs::remove_dir_all(&data).unwrap();
    let stale = cli(&elsewhere, &config, &["nodes"]).await;
    assert_eq!(stale.status.code(), Some(1));
    let error = stderr(&stale);
    assert!(
        error.contains(&format!(
            "the current mesh file {} names {}, which does not exist",
            current.display(),
            data.display()
        )),
        "{error}"
    );
}
