//! Real `falak node` processes on loopback: the benchmarks' harness (`falak_bench::mesh`)
//! with the panicking conveniences tests want.

#![allow(dead_code, reason = "each test uses a different part")]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use falak_api::Client;
use falak_bench::mesh::MeshOptions;

pub const HELLO: &str = r#"name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]
resources: { cpu: 100m, memory: 32Mi }
placement: { strategy: balanced, labels: {}, max_attempts: 3 }
"#;

/// A mesh of real node processes: 4 cpu / 4 GiB per node, lease 2 s.
pub struct Mesh(falak_bench::mesh::Mesh);

impl Deref for Mesh {
    type Target = falak_bench::mesh::Mesh;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Mesh {
    /// Provision `n` nodes under `dir` and start them.
    pub fn start(binary: &Path, dir: &Path, n: usize) -> Mesh {
        let options = MeshOptions { cpu: "4".into(), memory: "4Gi".into(), ..MeshOptions::new(n) };
        Mesh(falak_bench::mesh::Mesh::start(binary, dir, &options).expect("mesh starts"))
    }

    pub fn spawn(&mut self, i: usize) {
        self.0.spawn(i).expect("node starts");
    }

    pub async fn wait_ready(&mut self, limit: Duration) {
        self.0.wait_ready(limit).await.expect("every node ready");
    }

    pub fn signal(&self, i: usize, signal: i32) {
        self.0.signal(i, signal).expect("signal delivered");
    }

    pub fn kill9(&mut self, i: usize) {
        self.0.kill9(i).expect("node killed");
    }

    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        self.0.stop(i).expect("node stops")
    }

    pub fn client_except(&self, except: &[usize]) -> &Client {
        self.0.client_except(except).expect("a running node")
    }

    pub async fn leader(&self) -> usize {
        self.0.leader(Duration::from_secs(10)).await.expect("a leader")
    }

    /// The node's log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        self.0.nodes[i].log_tail(200)
    }
}
