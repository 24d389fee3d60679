//! Real `falak node` processes on loopback: provision a mesh, start, kill -9, SIGSTOP/SIGCONT
//! and restart nodes. Adapted from the integration tests' harness (`crates/falak/tests/it/procs.rs`):
//! it takes the binary's path, the nodes' capacity and lease, and reports failures as errors
//! instead of panicking. Every node process is killed when the [`Mesh`] is dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use falak_api::Client;
use falak_core::NodeId;
use falak_core::placement::Health;
use falak_core::resources::Quantity;
use falak_node::config::{CapacityDocument, FailureDetection, NodeConfigDocument};
use falak_node::mesh_files::{load_or_create_key, provision_loopback};

/// How each node of a mesh is configured.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    pub nodes: usize,
    /// Declared cpu capacity per node (`8`, `500m`).
    pub cpu: String,
    /// Declared memory capacity per node (`8Gi`).
    pub memory: String,
    /// Claim lease (`2s`).
    pub lease: String,
    /// The membership timing preset; the daemon's default when `None`.
    pub failure_detection: Option<FailureDetection>,
    /// Registries the nodes reach over plain HTTP (a local `docker-registry`).
    pub insecure_registries: Vec<String>,
    /// Registry credentials every node has.
    pub registry_auth: std::collections::BTreeMap<String, falak_image::RegistryAuth>,
}

impl MeshOptions {
    /// `nodes` nodes of 8 cpu / 8 GiB each (so placement never throttles a benchmark), lease 2 s.
    pub fn new(nodes: usize) -> MeshOptions {
        MeshOptions {
            nodes,
            cpu: "8".into(),
            memory: "8Gi".into(),
            lease: "2s".into(),
            failure_detection: None,
            insecure_registries: Vec::new(),
            registry_auth: std::collections::BTreeMap::new(),
        }
    }
}

/// One node of the mesh, running or not.
pub struct Node {
    pub name: String,
    pub id: NodeId,
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

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The last `lines` lines of the node's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A mesh of real node processes.
pub struct Mesh {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    binary: PathBuf,
    /// The admin token every node client sends.
    pub token: String,
    /// The mesh CA certificate (PEM) the clients trust.
    pub ca: String,
}

impl Mesh {
    /// A plain HTTP client that sends the admin token with every request.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {}", self.token).parse().expect("a token is a valid header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        let ca = reqwest::Certificate::from_pem(self.ca.as_bytes()).expect("the mesh CA is a PEM certificate");
        reqwest::Client::builder()
            .default_headers(headers)
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("an HTTP client")
    }
}

impl Mesh {
    /// Provision the nodes under `dir` and start them (not yet ready: see [`Mesh::wait_ready`]).
    pub fn start(binary: &Path, dir: &Path, options: &MeshOptions) -> Result<Mesh> {
        let template = NodeConfigDocument {
            capacity: Some(CapacityDocument {
                cpu: Some(Quantity::Text(options.cpu.clone())),
                memory: Some(Quantity::Text(options.memory.clone())),
                gpus: None,
            }),
            lease: Some(options.lease.clone()),
            failure_detection: options.failure_detection,
            insecure_registries: options.insecure_registries.clone(),
            registry_auth: options.registry_auth.clone(),
            ..NodeConfigDocument::default()
        };
        let provisioned = provision_loopback("bench", dir, options.nodes, &template, falak_node::clock::system_now())
            .context("provisioning the mesh")?;
        let token = provisioned.admin_token.encode();
        let ca = provisioned.ca_cert_pem.clone();
        let deployer = std::sync::Arc::new(provisioned.deployer);
        let mut nodes = Vec::new();
        for doc in provisioned.nodes {
            let dir = doc.data_dir.clone().context("data dir")?;
            let config = dir.join("node.yaml");
            std::fs::write(&config, yaml_serde::to_string(&doc)?).with_context(|| format!("writing {config:?}"))?;
            // As `falak up` writes it: only the node reads it (registry credentials).
            std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let api = format!("https://{}", doc.api_addr.context("api addr")?);
            nodes.push(Node {
                name: doc.name.clone().context("name")?,
                id: load_or_create_key(&dir)?.id(),
                dir,
                config,
                client: Client::new(&api)?
                    .with_ca(&ca)?
                    .with_token(Some(token.clone()))
                    .with_deployer(Some(deployer.clone())),
                api,
                child: None,
            });
        }
        let mut mesh = Mesh { dir: dir.to_owned(), nodes, binary: binary.to_owned(), token, ca };
        for i in 0..options.nodes {
            mesh.spawn(i)?;
        }
        Ok(mesh)
    }

    /// Start node `i` (again) with its config; its log is appended to `DIR/node.log`.
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            bail!("{} is already running", node.name);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("node.log"))?;
        let child = Command::new(&self.binary)
            // Its own process group: a Ctrl-C at the terminal reaches only the harness, which
            // then kills the nodes.
            .process_group(0)
            .args(["node", "-c"])
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} {:?}", self.binary.display(), node.config))?;
        node.child = Some(child);
        Ok(())
    }

    /// Wait until every running node is ready (joined the ledger, a leader known). A node
    /// process that exits meanwhile is an error at once.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for node in self.nodes.iter_mut().filter(|n| n.running()) {
            loop {
                if node.client.ready().await.is_ok_and(|r| r.ready) {
                    break;
                }
                if let Some(child) = node.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    node.child = None;
                    bail!("{} exited ({status}) before it was ready; log tail:\n{}", node.name, node.log_tail(20));
                }
                if Instant::now() > deadline {
                    bail!("{} not ready within {limit:?}; log tail:\n{}", node.name, node.log_tail(20));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Wait until every running node sees every running node HEALTHY (and every stopped one
    /// not HEALTHY is not required).
    pub async fn wait_all_healthy(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let want: Vec<NodeId> = self.nodes.iter().filter(|n| n.running()).map(|n| n.id).collect();
        for node in self.nodes.iter().filter(|n| n.running()) {
            loop {
                let ok = match node.client.nodes().await {
                    Ok(list) => want.iter().all(|id| list.iter().any(|n| n.id == *id && n.state == Health::Healthy)),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} does not see every running node HEALTHY within {limit:?}: {:?}",
                        node.name,
                        node.client
                            .nodes()
                            .await
                            .map(|l| l.iter().map(|n| format!("{}={}", n.name, n.state.name())).collect::<Vec<_>>())
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    pub fn signal(&self, i: usize, signal: i32) -> Result<()> {
        let Some(pid) = self.nodes[i].pid() else { bail!("{} is not running", self.nodes[i].name) };
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!("kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// kill -9 and reap. The node's task processes keep running: the caller may collect them
    /// first with [`Mesh::task_groups`].
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        self.signal(i, libc::SIGKILL)?;
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGTERM and wait (at most 20 s) for the node to exit; its exit status.
    pub fn stop(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        self.signal(i, libc::SIGTERM)?;
        let mut child = self.nodes[i].child.take().context("node not running")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not stop within 20 s after SIGTERM", self.nodes[i].name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of a running node other than those in `except`.
    pub fn client_except(&self, except: &[usize]) -> Result<&Client> {
        let node = self.nodes.iter().enumerate().find(|(i, n)| !except.contains(i) && n.running());
        Ok(&node.context("no running node left")?.1.client)
    }

    /// Indices of running nodes other than those in `except`.
    pub fn running_except(&self, except: &[usize]) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| !except.contains(i) && self.nodes[*i].running()).collect()
    }

    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The index of the node that leads the ledger, as a running node sees it.
    pub async fn leader(&self, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            for node in self.nodes.iter().filter(|n| n.running()) {
                if let Ok(r) = node.client.ready().await
                    && let Some(leader) = r.leader
                    && let Some(i) = self.index_of(leader)
                    && self.nodes[i].running()
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no running leader known within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process groups of node `i`'s task processes: each task runs in its own session
    /// (`setsid`), so a direct child of the node leads its group. A node killed with -9 leaves
    /// them running; kill them with [`kill_groups`].
    pub fn task_groups(&self, i: usize) -> Vec<i32> {
        self.nodes[i].pid().map(children_groups).unwrap_or_default()
    }

    /// Resident set size of each running node process, in bytes, from `/proc/PID/status`.
    pub fn rss(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for node in self.nodes.iter() {
            let Some(pid) = node.pid() else { continue };
            out.push((node.name.clone(), vm_rss(pid)?));
        }
        Ok(out)
    }
}

/// `VmRSS` of a process in bytes.
pub fn vm_rss(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS line")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// The process groups led by direct children of `parent` (never our own group).
pub fn children_groups(parent: i32) -> Vec<i32> {
    // SAFETY: getpgrp(2) has no preconditions.
    let own = unsafe { libc::getpgrp() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut groups = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command (which may hold spaces): state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(pgrp)) =
            (fields.get(1).and_then(|f| f.parse::<i32>().ok()), fields.get(2).and_then(|f| f.parse::<i32>().ok()))
        else {
            continue;
        };
        if ppid == parent && pgrp == pid && pgrp > 1 && pgrp != own {
            groups.push(pgrp);
        }
    }
    groups
}

/// SIGKILL each process group (tasks left behind by a node killed with -9).
pub fn kill_groups(groups: &[i32]) {
    for &group in groups {
        // SAFETY: kill(2) of a process group we found led by a task of a node we spawned.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let groups = children_groups(child.id() as i32);
                let _ = child.kill();
                let _ = child.wait();
                kill_groups(&groups);
            }
        }
    }
}
