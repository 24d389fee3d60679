//! Admission with real processes: `falak node admit` makes a join token, a fourth `falak node
//! --join` process joins with it and is listed, a fifth is refused (the token admits one node)
//! and writes nothing, and `falak node revoke` throws the fourth out for good.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::procs::Mesh;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_falak"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `falak` client command against node 1, as the admin.
async fn cli(mesh: &Mesh, ca: &Path, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(binary())
        .args(args)
        .args(["--api", &mesh.nodes[0].api, "--ca", ca.to_str().unwrap(), "--token", &mesh.token])
        .current_dir(&mesh.dir)
        .output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("the command ends").unwrap()
}

/// `falak node --join TOKEN` for a new node `name` under `dir`, its output in `dir/name.log`.
fn joiner(dir: &Path, name: &str, token: &str) -> (std::process::Command, PathBuf) {
    let data = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    let mut command = std::process::Command::new(binary());
    command
        .args(["node", "--join", token, "--name", name, "--data-dir", data.to_str().unwrap()])
        .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--transport-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--gossip-addr", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
    (command, data)
}

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn node_names(mesh: &Mesh) -> Vec<String> {
    mesh.nodes[1].client.nodes().await.unwrap().into_iter().map(|n| n.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_admits_once_and_a_revoked_node_stays_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start(binary(), dir.path(), 3);
    mesh.wait_ready(Duration::from_secs(60)).await;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &mesh.ca).unwrap();

    let admitted = cli(&mesh, &ca, &["node", "admit", "--uses", "1", "--ttl", "10m"]).await;
    assert!(admitted.status.success(), "{}", String::from_utf8_lossy(&admitted.stderr));
    let token = String::from_utf8(admitted.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("falak-join-v2."), "{token}");
    assert!(String::from_utf8_lossy(&admitted.stderr).contains("admits 1 node(s)"));

    let (mut command, _) = joiner(dir.path(), "node-4", &token);
    let _node4 = Reap(command.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node_names(&mesh).await.contains(&"node-4".to_owned()) {
        let err = std::fs::read_to_string(dir.path().join("node-4.err")).unwrap_or_default();
        assert!(Instant::now() < deadline, "node-4 never joined:\n{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The token admitted one node, all it allows: a fifth node is refused and keeps nothing.
    let (command, data5) = joiner(dir.path(), "node-5", &token);
    let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("a refused joiner exits (it must not run as a member)")
        .unwrap();
    let err = std::fs::read_to_string(dir.path().join("node-5.err")).unwrap();
    assert!(!status.success() && err.contains("already used by 1 node(s)"), "{status}\n{err}");
    assert!(!data5.join("node.crt").exists() && !data5.join("mesh.secret").exists());

    // Revoked: the ledger drops it, and its process (still running, still gossiping, still
    // trying to admit itself) never gets back in.
    let revoked = cli(&mesh, &ca, &["node", "revoke", "node-4"]).await;
    let said = String::from_utf8_lossy(&revoked.stdout);
    assert!(revoked.status.success() && said.starts_with("revoked node node-4"), "{said}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut names = node_names(&mesh).await;
    names.sort();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    let listed = cli(&mesh, &ca, &["nodes"]).await;
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("node-4"));
}
