//! Real `falak node` processes on loopback, for tests and benchmarks: provision a mesh, start,
//! kill -9, SIGSTOP/SIGCONT, stop and restart nodes.

#![allow(dead_code, reason = "shared by tests and benchmarks that use different parts")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use falak_api::Client;
use falak_core::resources::Quantity;
use falak_node::config::{CapacityDocument, NodeConfigDocument};
use falak_node::mesh_files::{LocalNode, load_or_create_key, provision_local_mesh};

pub const HELLO: &str = r#"name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]
resources: { cpu: 100m, memory: 32Mi }
placement: { strategy: balanced, labels: {}, max_attempts: 3 }
"#;

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub struct Node {
    pub name: String,
    pub id: falak_core::NodeId,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub api: String,
    pub client: Client,
    pub child: Option<Child>,
}

impl Node {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// A mesh of real node processes.
pub struct Mesh {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    binary: PathBuf,
}

impl Mesh {
    /// Provision `n` nodes under `dir` (capacity 4 cpu / 4 GiB each, lease 2 s) and start them.
    pub fn start(binary: &Path, dir: &Path, n: usize) -> Mesh {
        let mut locals = Vec::new();
        let mut docs = Vec::new();
        for i in 0..n {
            let name = format!("node-{}", i + 1);
            let data_dir = dir.join(&name);
            let (api, transport, gossip) = (free_tcp(), free_udp(), free_udp());
            locals.push(LocalNode {
                name: name.clone(),
                dir: data_dir.clone(),
                transport_addr: transport.to_string(),
                gossip_addr: gossip.to_string(),
            });
            docs.push(NodeConfigDocument {
                name: Some(name),
                data_dir: Some(data_dir),
                api_addr: Some(api),
                transport_addr: Some(transport),
                gossip_addr: Some(gossip),
                capacity: Some(CapacityDocument {
                    cpu: Some(Quantity::Text("4".into())),
                    memory: Some(Quantity::Text("4Gi".into())),
                    gpus: None,
                }),
                lease: Some("2s".into()),
                ..NodeConfigDocument::default()
            });
        }
        provision_local_mesh("test", &locals, rand::random(), falak_node::clock::system_now()).unwrap();
        let mut nodes = Vec::new();
        for doc in docs {
            let dir = doc.data_dir.clone().unwrap();
            let config = dir.join("node.yaml");
            std::fs::write(&config, yaml_serde::to_string(&doc).unwrap()).unwrap();
            let api = format!("http://{}", doc.api_addr.unwrap());
            nodes.push(Node {
                name: doc.name.clone().unwrap(),
                id: load_or_create_key(&dir).unwrap().id(),
                dir,
                config,
                client: Client::new(&api).unwrap(),
                api,
                child: None,
            });
        }
        let mut mesh = Mesh { dir: dir.to_owned(), nodes, binary: binary.to_owned() };
        for i in 0..n {
            mesh.spawn(i);
        }
        mesh
    }

    pub fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("node.log")).unwrap();
        let child = Command::new(&self.binary)
            .args(["node", "-c"])
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// Wait until every running node is ready.
    pub async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                if node.client.ready().await.is_ok_and(|r| r.ready) {
                    break;
                }
                assert!(Instant::now() < deadline, "{} not ready:\n{}", node.name, node.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.nodes[i].pid().expect("node runs");
        // SAFETY: kill(2) with a pid we spawned.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        if self.nodes[i].child.is_none() {
            return std::os::unix::process::ExitStatusExt::from_raw(0);
        }
        self.signal(i, libc::SIGTERM);
        let mut child = self.nodes[i].child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not stop within 20 s after SIGTERM", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of a running node other than `except`.
    pub fn client_except(&self, except: &[usize]) -> &Client {
        let node = self.nodes.iter().enumerate().find(|(i, n)| !except.contains(i) && n.child.is_some());
        &node.expect("a running node").1.client
    }

    /// The index of the node that leads the ledger, as a running node sees it.
    pub async fn leader(&self) -> usize {
        for _ in 0..100 {
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(r) = node.client.ready().await
                    && let Some(leader) = r.leader
                    && let Some(i) = self.nodes.iter().position(|n| n.id == leader)
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader known");
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
