//! `falak up`: a local mesh of real node processes on loopback, in the foreground.
//!
//! ```text
//! DATA_DIR/           the mesh dir: a node data dir's mode (`mesh_files::data_dir_mode`)
//!   mesh.json         what runs now: pids, API URLs, node ids, credential paths (0600);
//!                     kept in step as nodes exit and run again, removed when `falak up`
//!                     stops and no node of the mesh runs
//!   credentials/      admin.token, deployer.key (0600) and ca.crt; the dir 0700
//!   NAME/node.yaml    the node's config, written when the mesh is provisioned
//!   NAME/node.log     the output of the node processes `falak up` starts, appended (0600)
//!   NAME/node.pid     the node process running now, however it was started (`falak node`
//!                     writes it)
//!   NAME/...          the mesh files and the ledger (see `falak_node::mesh_files`)
//! ```
//!
//! A data dir that already holds the mesh is restarted as it is: the same identities, ports
//! and ledger. Otherwise a new mesh is provisioned: a fresh CA, mesh secret and node keys.
//! Nodes run in their own process group, so a terminal's Ctrl-C reaches only `falak up`,
//! which then stops them with SIGTERM (SIGKILL after a grace period or a second Ctrl-C).
//! A node that exits is followed when it is started again by hand (`falak node -c
//! NAME/node.yaml`), or restarted by `falak up` itself with `--restart` (`supervise.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use falak_api::job::JobSubmission;
use falak_api::task::TaskInfo;
use falak_api::{Client, ClientError, ErrorCode};
use falak_core::job::{JobId, JobState};
use falak_node::cluster::{
    ClusterDocument, ClusterPlan, DEFAULT_CLUSTER, LocalNodeDocument, MAX_LOCAL_NODES, PortsDocument,
};
use falak_node::config::NodeConfigDocument;
use falak_node::mesh_files::{self, Bootstrap, LocalNode};
use futures_util::future::{join_all, select_all};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::output::{Table, duration, or_dash};

mod demo;
mod record;
mod supervise;

use demo::{run_demo, run_function_demo};
pub(in crate::cli) use record::write_atomic;
use record::{MeshRecord, Shell, mesh_record, render_endpoints};
use supervise::{MeshNode, Supervisor};

/// Run a local mesh on loopback in the foreground.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Cluster file (YAML) describing the mesh [default: three nodes named node-1..3].
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Number of nodes (overrides the cluster file's count).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Where node data dirs and mesh.json go [default: the cluster file's, else .falak].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node i listens on PORT+i (API), PORT+100+i (transport) and PORT+200+i (gossip);
    /// 0 picks free ports. Applies when a mesh is created, not on restart.
    #[arg(long, value_name = "PORT")]
    pub base_port: Option<u16>,
    /// Run a demo job once the mesh is up, print the result, keep running.
    #[arg(long)]
    pub demo: bool,
    /// Restart a node whose process exits while the mesh is up: after 1s, doubling up to 30s
    /// while it keeps exiting, back to 1s once it has run for a minute. Without it, `falak up`
    /// prints the command that starts the node again, and follows the node once it runs.
    #[arg(long)]
    pub restart: bool,
    /// A registry the nodes may reach over plain HTTP (`HOST:PORT`, e.g. a local
    /// `127.0.0.1:5000`); repeatable. Added to every node's `insecure_registries`, also on a
    /// restart.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
}

/// The file in the data dir that records the running mesh.
pub const MESH_JSON: &str = "mesh.json";
/// How long nodes get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is asked.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long one readiness request may take.
const READY_REQUEST: Duration = Duration::from_secs(2);
/// How long nodes get to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 30;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let root = std::path::absolute(&plan.data_dir)
        .with_context(|| format!("cannot resolve the data dir {}", plan.data_dir.display()))?;
    let mesh_file = root.join(MESH_JSON);
    let _lock = lock_data_dir(&root)?;
    check_not_running(&mesh_file, std::process::id())?;
    if let Some(bad) = args.insecure_registries.iter().find(|r| r.is_empty() || r.contains("://") || r.contains('/')) {
        anyhow::bail!("--insecure-registry {bad:?}: write HOST:PORT, e.g. 127.0.0.1:5000, without a scheme or path");
    }
    let mut setups = prepare(&plan, &root, args.base_port)?;
    if !args.insecure_registries.is_empty() {
        for setup in &mut setups {
            let registries = &mut setup.config.insecure_registries;
            for registry in &args.insecure_registries {
                if !registries.contains(registry) {
                    registries.push(registry.clone());
                }
            }
            write_node_config(setup)?;
        }
    }
    let mut signals = Signals::new()?;
    let mut supervisor = Supervisor::new(&root, args.restart);
    let result = run_mesh(&plan.name, &root, &setups, &mut supervisor, &mut signals, args.demo).await;
    // mesh.json (and with `cleanup`, the data) stays while a node of the mesh still runs.
    let stopped = supervisor.stop(&mut signals).await;
    if stopped.is_ok() {
        remove_own_mesh_file(&mesh_file);
        if plan.cleanup {
            clean_up(&root, &setups);
        }
    }
    result.and(stopped)
}

// Planning.

/// The cluster file (or the embedded default) with the command line's overrides.
fn plan(args: &UpArgs) -> anyhow::Result<ClusterPlan> {
    let mut plan = match &args.file {
        Some(path) => ClusterDocument::load(path).with_context(|| format!("cluster file {}", path.display()))?,
        None => ClusterDocument::parse(DEFAULT_CLUSTER).context("the embedded default cluster")?,
    };
    if let Some(count) = args.nodes {
        set_node_count(&mut plan, count)?;
    }
    if let Some(dir) = &args.data_dir {
        plan.data_dir = dir.clone();
    }
    if let Some(base) = args.base_port {
        plan.ports = base_ports(base);
    }
    if let Some(ports) = plan.ports {
        check_port_ranges(ports, plan.nodes.len())?;
    }
    Ok(plan)
}

/// `--nodes N`: N default nodes, unless the file lists its nodes one by one.
fn set_node_count(plan: &mut ClusterPlan, count: u32) -> anyhow::Result<()> {
    if count == 0 || count > MAX_LOCAL_NODES {
        bail!("--nodes must be between 1 and {MAX_LOCAL_NODES}, got {count}");
    }
    if plan.nodes.len() == count as usize {
        return Ok(());
    }
    let only_a_count = plan.nodes.iter().enumerate().all(|(i, node)| *node == default_node(i));
    if !only_a_count {
        bail!(
            "--nodes {count} conflicts with the {} nodes the cluster file lists; edit the file or drop --nodes",
            plan.nodes.len()
        );
    }
    plan.nodes = (0..count as usize).map(default_node).collect();
    Ok(())
}

fn default_node(index: usize) -> LocalNodeDocument {
    LocalNodeDocument { name: Some(format!("node-{}", index + 1)), ..LocalNodeDocument::default() }
}

/// `--base-port PORT`: the API from PORT, transport from PORT+100, gossip from PORT+200.
fn base_ports(base: u16) -> Option<PortsDocument> {
    (base != 0).then(|| PortsDocument {
        api: base,
        transport: base.saturating_add(100),
        gossip: base.saturating_add(200),
    })
}

/// Every node's ports exist, and the two UDP ranges (transport, gossip) do not overlap.
fn check_port_ranges(ports: PortsDocument, count: usize) -> anyhow::Result<()> {
    let n = count as u32;
    for (what, base) in [("API", ports.api), ("transport", ports.transport), ("gossip", ports.gossip)] {
        if u32::from(base) + n > 65535 {
            bail!("{what} ports from {base} for {n} nodes run past port 65535; pick a lower base port");
        }
    }
    let (t, g) = (u32::from(ports.transport), u32::from(ports.gossip));
    if t < g + n && g < t + n {
        bail!("transport ports {t}.. and gossip ports {g}.. overlap for {n} nodes; space them at least {n} apart");
    }
    Ok(())
}

/// The three ports one node listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodePorts {
    api: u16,
    transport: u16,
    gossip: u16,
}

/// Fixed ports (node i uses base + i), or free ones when `ports` is `None`.
fn assign_ports(ports: Option<PortsDocument>, count: usize) -> anyhow::Result<Vec<NodePorts>> {
    match ports {
        Some(p) => Ok((0..count as u16)
            .map(|i| NodePorts { api: p.api + i, transport: p.transport + i, gossip: p.gossip + i })
            .collect()),
        None => free_ports(count),
    }
}

/// Ports nothing listens on now: TCP for the API, UDP for transport (QUIC) and gossip. Every
/// socket is held until all are chosen, so no two nodes get the same port.
fn free_ports(count: usize) -> anyhow::Result<Vec<NodePorts>> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..count {
        let api = TcpListener::bind(any).context("cannot find a free TCP port on 127.0.0.1")?;
        let transport = UdpSocket::bind(any).context("cannot find a free UDP port on 127.0.0.1")?;
        let gossip = UdpSocket::bind(any).context("cannot find a free UDP port on 127.0.0.1")?;
        ports.push(NodePorts {
            api: api.local_addr()?.port(),
            transport: transport.local_addr()?.port(),
            gossip: gossip.local_addr()?.port(),
        });
        held_tcp.push(api);
        held_udp.extend([transport, gossip]);
    }
    Ok(ports)
}

/// `1 node`, `3 nodes`.
fn count(nodes: usize) -> String {
    if nodes == 1 { "1 node".to_owned() } else { format!("{nodes} nodes") }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// Node setups: provisioned now, or reused from the data dir.

/// One node as `falak up` runs it.
#[derive(Debug, Clone, PartialEq)]
struct NodeSetup {
    name: String,
    /// Its data dir (absolute): `DATA_DIR/NAME`.
    dir: PathBuf,
    api: SocketAddr,
    transport: SocketAddr,
    gossip: SocketAddr,
    config: NodeConfigDocument,
}

impl NodeSetup {
    fn config_path(&self) -> PathBuf {
        self.dir.join("node.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    fn api_url(&self) -> String {
        format!("https://{}", self.api)
    }
}

/// A node config per planned node; each node's seeds are the others' gossip addresses.
fn node_setups(plan: &ClusterPlan, root: &Path, ports: &[NodePorts]) -> Vec<NodeSetup> {
    let gossip: Vec<SocketAddr> = ports.iter().map(|p| loopback(p.gossip)).collect();
    plan.nodes
        .iter()
        .zip(ports)
        .enumerate()
        .map(|(i, (node, p))| {
            let name = node.name.clone().unwrap_or_else(|| format!("node-{}", i + 1));
            let dir = root.join(&name);
            let (api, transport) = (loopback(p.api), loopback(p.transport));
            let seeds = gossip.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
            let config = NodeConfigDocument {
                name: Some(name.clone()),
                data_dir: Some(dir.clone()),
                api_addr: Some(api),
                transport_addr: Some(transport),
                gossip_addr: Some(gossip[i]),
                labels: node.labels.clone(),
                capacity: node.capacity.clone(),
                cost_per_hour: node.cost_per_hour,
                seeds,
                // The mesh dir holds the admin credentials and every node's keys.
                hidden_from_workloads: vec![root.to_path_buf()],
                ..NodeConfigDocument::default()
            };
            NodeSetup { name, dir, api, transport, gossip: gossip[i], config }
        })
        .collect()
}

/// The nodes to start: the mesh already in the data dir (a restart), or a new one.
/// `base_port` is the `--base-port` flag, only to note that a restart keeps its ports.
fn prepare(plan: &ClusterPlan, root: &Path, base_port: Option<u16>) -> anyhow::Result<Vec<NodeSetup>> {
    if let Some(setups) = existing_mesh(plan, root)? {
        mesh_files::secure_credentials(root)?;
        println!(
            "restarting mesh {} from {}: {}, identities, ports and ledger kept",
            plan.name,
            root.display(),
            count(setups.len())
        );
        if let Some(base) = base_port.filter(|p| *p != 0)
            && setups.first().is_some_and(|s| s.api.port() != base)
        {
            println!("note: the ports in each node.yaml are kept; a base port applies only to a new mesh");
        }
        return Ok(setups);
    }
    let ports = assign_ports(plan.ports, plan.nodes.len())?;
    let setups = node_setups(plan, root, &ports);
    provision(&plan.name, root, &setups)?;
    println!("provisioned mesh {} in {}: {}, a new CA and mesh secret", plan.name, root.display(), count(setups.len()));
    Ok(setups)
}

/// Write every node.yaml, then the mesh files (keys, certificates, secret, bootstrap voters).
fn provision(mesh: &str, root: &Path, setups: &[NodeSetup]) -> anyhow::Result<()> {
    for setup in setups {
        write_node_config(setup)?;
    }
    let nodes: Vec<LocalNode> = setups
        .iter()
        .map(|s| LocalNode {
            name: s.name.clone(),
            dir: s.dir.clone(),
            transport_addr: s.transport.to_string(),
            gossip_addr: s.gossip.to_string(),
        })
        .collect();
    let secret: [u8; 32] = rand::random();
    let provisioned = mesh_files::provision_local_mesh(mesh, &nodes, secret, falak_node::clock::system_now())
        .with_context(|| format!("cannot provision mesh {mesh}"))?;
    mesh_files::write_credentials(root, &provisioned.admin_token, &provisioned.deployer, &provisioned.ca_cert_pem)
        .with_context(|| format!("cannot write the credentials of mesh {mesh}"))?;
    Ok(())
}

fn write_node_config(setup: &NodeSetup) -> anyhow::Result<()> {
    let path = setup.config_path();
    let text = yaml_serde::to_string(&setup.config).with_context(|| format!("cannot render {}", path.display()))?;
    let text = format!("# written by `falak up` for node {} of a local mesh\n{text}", setup.name);
    mesh_files::make_data_dir(&setup.dir)?;
    // Only the node reads it: it may hold registry credentials.
    write_atomic(&path, text.as_bytes(), 0o600)
}

/// Whether a node data dir was provisioned by `falak up` (the bootstrap file is written last).
fn is_provisioned(dir: &Path) -> bool {
    dir.join("node.crt").exists() && dir.join("bootstrap.json").exists()
}

/// The provisioned node dirs under `root`, by name.
fn provisioned_nodes(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read the data dir {}", root.display())),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read the data dir {}", root.display()))?;
        if is_provisioned(&entry.path()) {
            names.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// The mesh in `root` when it was provisioned before: the same nodes, each with its node.yaml.
fn existing_mesh(plan: &ClusterPlan, root: &Path) -> anyhow::Result<Option<Vec<NodeSetup>>> {
    let found = provisioned_nodes(root)?;
    if found.is_empty() {
        return Ok(None);
    }
    let wanted: BTreeSet<String> = plan.nodes.iter().filter_map(|n| n.name.clone()).collect();
    if found != wanted {
        bail!(
            "{} holds a mesh of nodes {} but this plan has nodes {}; start it with the same nodes, \
             pick another --data-dir, or remove {} to start over",
            root.display(),
            names_text(&found),
            names_text(&wanted),
            root.display()
        );
    }
    let first = plan.nodes.first().and_then(|n| n.name.as_deref()).unwrap_or_default();
    let bootstrap_path = root.join(first).join("bootstrap.json");
    let text =
        fs::read_to_string(&bootstrap_path).with_context(|| format!("cannot read {}", bootstrap_path.display()))?;
    let bootstrap: Bootstrap =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", bootstrap_path.display()))?;
    if bootstrap.mesh != plan.name {
        bail!(
            "{} holds mesh {}, not {}; pick another --data-dir or remove {} to start over",
            root.display(),
            bootstrap.mesh,
            plan.name,
            root.display()
        );
    }
    let setups = plan
        .nodes
        .iter()
        .filter_map(|n| n.name.as_deref())
        .map(|name| reuse_node(root, name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(setups))
}

fn names_text(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// A provisioned node's setup, read back from its node.yaml (its data dir follows the data
/// dir if that moved).
fn reuse_node(root: &Path, name: &str) -> anyhow::Result<NodeSetup> {
    let dir = root.join(name);
    let path = dir.join("node.yaml");
    let hint = || format!("cannot restart node {name}; remove {} to start a new mesh", root.display());
    let mut config = NodeConfigDocument::load(&path).with_context(hint)?;
    if config.name.as_deref() != Some(name) {
        bail!("{} names node {:?}, not {name}; {}", path.display(), config.name.unwrap_or_default(), hint());
    }
    let addr = |field: &str, value: Option<SocketAddr>| {
        value.with_context(|| format!("{} has no {field}; {}", path.display(), hint()))
    };
    let (api, transport, gossip) = (
        addr("api_addr", config.api_addr)?,
        addr("transport_addr", config.transport_addr)?,
        addr("gossip_addr", config.gossip_addr)?,
    );
    let moved = config.data_dir.as_deref() != Some(dir.as_path());
    config.data_dir = Some(dir.clone());
    let setup = NodeSetup { name: name.to_owned(), dir, api, transport, gossip, config };
    if moved {
        write_node_config(&setup)?;
    }
    Ok(setup)
}

// Another `falak up` on the same data dir.

/// Locked while a `falak up` runs on the data dir.
const LOCK_FILE: &str = ".up.lock";

/// Lock the data dir (creating it) for as long as the returned file lives, so two `falak up`
/// never provision or run the same mesh. The kernel drops the lock when the process dies.
fn lock_data_dir(root: &Path) -> anyhow::Result<fs::File> {
    mesh_files::make_data_dir(root).with_context(|| format!("cannot make the data dir {}", root.display()))?;
    let path = root.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            bail!("another `falak up` runs the mesh in {}; stop it first (Ctrl-C in its terminal)", root.display())
        }
        Err(fs::TryLockError::Error(error)) => Err(error).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// The part of an earlier mesh.json needed to tell whether its processes still run.
#[derive(Debug, Default, Deserialize)]
struct PreviousRun {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    nodes: Vec<PreviousNode>,
}

#[derive(Debug, Deserialize)]
struct PreviousNode {
    #[serde(default)]
    name: String,
    #[serde(default)]
    pid: Option<u32>,
}

/// Refuse when the mesh file names a live `falak up` or live nodes from an earlier run.
fn check_not_running(mesh_file: &Path, own_pid: u32) -> anyhow::Result<()> {
    let text = match fs::read_to_string(mesh_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", mesh_file.display())),
    };
    // A mesh file this version cannot read is stale: it is rewritten once the mesh is up.
    let previous: PreviousRun = serde_json::from_str(&text).unwrap_or_default();
    if let Some(pid) = previous.pid.filter(|pid| *pid != own_pid && falak_alive(*pid)) {
        bail!(
            "another `falak up` (pid {pid}) runs the mesh in {}; stop it first (Ctrl-C in its terminal, or `kill {pid}`)",
            mesh_file.parent().unwrap_or(mesh_file).display()
        );
    }
    let alive: Vec<(String, u32)> = previous
        .nodes
        .into_iter()
        .filter_map(|n| Some((n.name, n.pid?)))
        .filter(|(_, pid)| falak_alive(*pid))
        .collect();
    if !alive.is_empty() {
        let list: Vec<String> = alive.iter().map(|(name, pid)| format!("{name} (pid {pid})")).collect();
        let pids: Vec<String> = alive.iter().map(|(_, pid)| pid.to_string()).collect();
        bail!(
            "nodes of an earlier `falak up` still run: {}; stop them first: `kill {}`",
            list.join(", "),
            pids.join(" ")
        );
    }
    Ok(())
}

/// Whether `pid` is a live falak process (a pid reused by another program does not count).
fn falak_alive(pid: u32) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    match fs::read(proc.join("cmdline")) {
        // A zombie has an empty command line.
        Ok(cmdline) => cmdline.windows(5).any(|w| w == b"falak"),
        Err(_) => proc.exists(),
    }
}

// Running.

/// SIGINT (Ctrl-C) and SIGTERM, caught so the nodes can be stopped.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Start, wait for readiness, record, then supervise (running the demo meanwhile) until a
/// signal. The caller stops whatever was started, whatever this returns.
async fn run_mesh(
    mesh: &str,
    root: &Path,
    setups: &[NodeSetup],
    supervisor: &mut Supervisor,
    signals: &mut Signals,
    demo: bool,
) -> anyhow::Result<()> {
    supervisor.start(setups)?;
    let nodes = &mut supervisor.nodes;
    println!("waiting for {} to be ready (up to {}s)", count(nodes.len()), READY_TIMEOUT.as_secs());
    let outcome = tokio::select! {
        outcome = wait_until_ready(nodes) => outcome,
        signal = signals.recv() => ReadyOutcome::Interrupted(signal),
    };
    match outcome {
        ReadyOutcome::Ready => {}
        ReadyOutcome::Interrupted(signal) => {
            println!("{signal}: stopping the mesh");
            return Ok(());
        }
        ReadyOutcome::Exited(i) => {
            let node = &nodes[i];
            show_log_tail(node);
            bail!(
                "node {} exited before it was ready ({}); its log is above and in {}",
                node.name(),
                node.exit().unwrap_or("unknown status"),
                node.setup.log_path().display()
            );
        }
        ReadyOutcome::TimedOut(waiting) => {
            for (i, reason) in &waiting {
                eprintln!("node {} is not ready: {reason}", nodes[*i].name());
                show_log_tail(&nodes[*i]);
            }
            let names: Vec<&str> = waiting.iter().map(|(i, _)| nodes[*i].name()).collect();
            bail!("{} not ready after {}s; see the logs above", names.join(", "), READY_TIMEOUT.as_secs());
        }
    }
    note_unable(nodes).await;
    let pids: Vec<u32> = nodes.iter().filter_map(MeshNode::pid).collect();
    let record = supervisor.record(mesh_record(mesh, root, setups, &pids, std::process::id())?)?;
    let mesh_file = root.join(MESH_JSON);
    match super::mesh::adopt(root) {
        Ok(Some(file)) => {
            println!("current mesh: {} (in {}; `falak mesh use DIR` changes it)", root.display(), file.display());
        }
        Ok(None) => {}
        Err(error) => eprintln!("warning: cannot make {} the current mesh: {error:#}", root.display()),
    }
    print!("{}", render_endpoints(&record, &mesh_file, &Shell::here(root)));
    let demo = demo.then(|| {
        let clients: Vec<Client> = supervisor.nodes.iter().map(|n| n.client.clone()).collect();
        let root = root.to_owned();
        Box::pin(async move {
            run_demo(&clients[0]).await?;
            run_function_demo(&clients, &root).await
        }) as supervise::Demo
    });
    supervisor.supervise(signals, demo).await
}

/// The admin token `falak up` wrote when it provisioned the mesh in `root`.
fn read_admin_token(root: &Path) -> anyhow::Result<String> {
    let path = root.join(mesh_files::CREDENTIALS_DIR).join("admin.token");
    let text = fs::read_to_string(&path).with_context(|| {
        format!("cannot read the admin token {}; a mesh provisioned before tokens existed must be provisioned again (remove {})", path.display(), root.display())
    })?;
    Ok(text.trim().to_owned())
}

/// Start `falak node -c NAME/node.yaml` in its own process group, its output appended to
/// NAME/node.log: the child and its pid.
fn spawn_node(exe: &Path, setup: &NodeSetup) -> anyhow::Result<(Child, u32)> {
    let log_path = setup.log_path();
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open the log of node {}: {}", setup.name, log_path.display()))?;
    // The node's own user reads it; it stays so when an older version made it wider.
    log.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", log_path.display()))?;
    let started = super::output::timestamp(falak_node::clock::now_millis());
    writeln!(log, "--- falak up starts node {} at {started} ---", setup.name)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let stderr = log.try_clone().with_context(|| format!("cannot open {}", log_path.display()))?;
    let child = Command::new(exe)
        .arg("node")
        .arg("-c")
        .arg(setup.config_path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // RUST_LOG passes through when set; the node's own default keeps raft and QUIC quiet.
        .env("NO_COLOR", "1")
        // Its own process group: a terminal's Ctrl-C reaches `falak up` only, which stops
        // the nodes itself.
        .process_group(0)
        // If `falak up` fails before it stops the node, dropping the handle kills it.
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot start node {} ({} node -c {})", setup.name, exe.display(), setup.config_path().display())
        })?;
    let pid = child.id().with_context(|| format!("node {} exited as it started", setup.name))?;
    Ok((child, pid))
}

enum ReadyOutcome {
    Ready,
    /// This node exited before it was ready.
    Exited(usize),
    /// These nodes, with the last reason each gave, were not ready in time.
    TimedOut(Vec<(usize, String)>),
    Interrupted(&'static str),
}

/// Ask every node's `/readyz` until all are ready, one exits, or the time is up.
async fn wait_until_ready(nodes: &mut [MeshNode]) -> ReadyOutcome {
    let mut reasons: Vec<Option<String>> = vec![Some("no answer yet".to_owned()); nodes.len()];
    let polling = async {
        loop {
            for (i, node) in nodes.iter_mut().enumerate() {
                if reasons[i].is_none() {
                    continue;
                }
                if node.reap() {
                    return ReadyOutcome::Exited(i);
                }
                reasons[i] = not_ready_reason(&node.client).await;
                if reasons[i].is_none() {
                    println!("{} is ready", node.name());
                }
            }
            if reasons.iter().all(Option::is_none) {
                return ReadyOutcome::Ready;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, polling).await {
        Ok(outcome) => outcome,
        Err(_) => ReadyOutcome::TimedOut(
            reasons.into_iter().enumerate().filter_map(|(i, reason)| Some((i, reason?))).collect(),
        ),
    }
}

/// Say which nodes cannot create namespaces, as each declared it when it started (its log
/// says why): work that asks for a network of its own cannot run on them.
async fn note_unable(nodes: &[MeshNode]) {
    let mut unable = Vec::new();
    for node in nodes {
        let Ok(Ok(listed)) = tokio::time::timeout(READY_REQUEST, node.client.nodes()).await else { continue };
        let own = listed.iter().find(|n| n.name == node.name());
        if own.is_some_and(|n| n.namespaces == Some(falak_core::node::Namespaces::Unavailable)) {
            unable.push(node.name());
        }
    }
    if !unable.is_empty() {
        print!("{}", crate::cli::nodes::unable_note(&unable));
    }
}

/// `None` when the node is ready, else why not.
async fn not_ready_reason(client: &Client) -> Option<String> {
    match tokio::time::timeout(READY_REQUEST, client.ready()).await {
        Ok(Ok(readiness)) if readiness.ready => None,
        Ok(Ok(readiness)) => Some(readiness.reason.unwrap_or_else(|| "not ready".to_owned())),
        Ok(Err(ClientError::Unreachable { .. })) => Some(format!("not listening on {} yet", client.base_url())),
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!("/readyz did not answer within {}s", READY_REQUEST.as_secs())),
    }
}

/// Print the end of a node's log to stderr.
fn show_log_tail(node: &MeshNode) {
    let log = node.setup.log_path();
    match log_tail(&log, LOG_TAIL_LINES) {
        Ok(tail) if tail.trim().is_empty() => eprintln!("--- {} is empty ---", log.display()),
        Ok(tail) => {
            eprintln!("--- last lines of {} ---", log.display());
            eprint!("{tail}");
            if !tail.ends_with('\n') {
                eprintln!();
            }
            eprintln!("---");
        }
        Err(error) => eprintln!("cannot read {}: {error}", log.display()),
    }
}

/// The last `lines` lines of a file, reading at most its last 64 KiB.
fn log_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    const MAX: u64 = 64 << 10;
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    // A partial first line (when the read started mid-file) is dropped.
    let text = if start > 0 { text.split_once('\n').map_or("", |(_, rest)| rest) } else { &text };
    let all: Vec<&str> = text.lines().collect();
    let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    Ok(tail)
}

/// Remove the mesh file if this process wrote it.
fn remove_own_mesh_file(mesh_file: &Path) {
    let ours = fs::read_to_string(mesh_file)
        .ok()
        .and_then(|text| serde_json::from_str::<PreviousRun>(&text).ok())
        .is_some_and(|run| run.pid == Some(std::process::id()));
    if ours {
        let _ = fs::remove_file(mesh_file);
    }
}

/// `cleanup: true`: remove the node dirs, and the data dir itself when nothing else is in it.
fn clean_up(root: &Path, setups: &[NodeSetup]) {
    for setup in setups {
        if let Err(error) = fs::remove_dir_all(&setup.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {error}", setup.dir.display());
        }
    }
    let _ = fs::remove_file(root.join(LOCK_FILE));
    let _ = fs::remove_dir(root);
    super::mesh::forget(root);
    println!("removed the mesh data in {} (cleanup: true)", root.display());
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use falak_api::node::NodeRef;
    use falak_core::NodeId;
    use falak_core::job::{TaskId, TaskState};
    use falak_core::resources::Resources;

    use super::demo::{DEMO_CAPSULE, DEMO_FUNCTION, tasks_per_node};
    use super::*;

    fn args() -> UpArgs {
        UpArgs {
            file: None,
            nodes: None,
            data_dir: None,
            base_port: None,
            demo: false,
            restart: false,
            insecure_registries: Vec::new(),
        }
    }

    #[test]
    fn the_default_plan_and_overrides() {
        let plan = plan(&args()).unwrap();
        assert_eq!((plan.name.as_str(), plan.nodes.len()), ("local", 3));
        assert_eq!(plan.ports, Some(PortsDocument { api: 7070, transport: 7170, gossip: 7270 }));
        assert_eq!(plan.data_dir, PathBuf::from(".falak"));

        let plan =
            super::plan(&UpArgs { nodes: Some(5), data_dir: Some("/tmp/m".into()), base_port: Some(0), ..args() })
                .unwrap();
        let names: Vec<_> = plan.nodes.iter().map(|n| n.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-5"]);
        assert_eq!(plan.ports, None, "base port 0 picks free ports");
        assert_eq!(plan.data_dir, PathBuf::from("/tmp/m"));

        let plan = super::plan(&UpArgs { base_port: Some(9000), ..args() }).unwrap();
        assert_eq!(plan.ports, Some(PortsDocument { api: 9000, transport: 9100, gossip: 9200 }));
        let error = super::plan(&UpArgs { base_port: Some(65400), ..args() }).unwrap_err().to_string();
        assert!(error.contains("run past port 65535"), "{error}");
        let error = super::plan(&UpArgs { nodes: Some(0), ..args() }).unwrap_err().to_string();
        assert!(error.contains("--nodes must be between 1 and 64"), "{error}");
    }

    #[test]
    fn nodes_cannot_resize_a_listed_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.yaml");
        fs::write(&file, "name: demo\nnodes:\n  list:\n    - { name: a, labels: { zone: x } }\n    - { name: b }\n")
            .unwrap();
        let error = plan(&UpArgs { file: Some(file.clone()), nodes: Some(3), ..args() }).unwrap_err().to_string();
        assert!(error.contains("conflicts with the 2 nodes the cluster file lists"), "{error}");
        let plan = plan(&UpArgs { file: Some(file.clone()), nodes: Some(2), ..args() }).unwrap();
        assert_eq!(plan.nodes[0].labels.get("zone").map(String::as_str), Some("x"));

        fs::write(&file, "name: demo\nnodes: { count: 2 }\nflavour: x\n").unwrap();
        let error = format!("{:#}", super::plan(&UpArgs { file: Some(file.clone()), ..args() }).unwrap_err());
        assert!(error.starts_with(&format!("cluster file {}: ", file.display())), "{error}");
        assert!(error.contains("unknown field `flavour`"), "{error}");
    }

    #[test]
    fn fixed_ports_are_base_plus_index() {
        let ports = assign_ports(Some(PortsDocument { api: 7070, transport: 7170, gossip: 7270 }), 3).unwrap();
        assert_eq!(ports[2], NodePorts { api: 7072, transport: 7172, gossip: 7272 });
        let error = check_port_ranges(PortsDocument { api: 7070, transport: 7100, gossip: 7102 }, 3).unwrap_err();
        assert!(error.to_string().contains("overlap"), "{error}");
        check_port_ranges(PortsDocument { api: 7070, transport: 7100, gossip: 7103 }, 3).unwrap();
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let udp: BTreeSet<u16> = ports.iter().flat_map(|p| [p.transport, p.gossip]).collect();
        let tcp: BTreeSet<u16> = ports.iter().map(|p| p.api).collect();
        assert_eq!((udp.len(), tcp.len()), (8, 4));
        assert!(ports.iter().all(|p| p.api != 0 && p.transport != 0 && p.gossip != 0));
    }

    fn test_plan(root: &Path, count: u32) -> (ClusterPlan, Vec<NodeSetup>) {
        let plan = super::plan(&UpArgs {
            nodes: Some(count),
            data_dir: Some(root.to_owned()),
            base_port: Some(20000),
            ..args()
        })
        .unwrap();
        let ports = assign_ports(plan.ports, plan.nodes.len()).unwrap();
        let setups = node_setups(&plan, root, &ports);
        (plan, setups)
    }

    #[test]
    fn node_yaml_round_trips_and_seeds_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.yaml");
        fs::write(
            &file,
            "name: demo\nnodes:\n  list:\n    - { name: edge, labels: { zone: a }, capacity: { cpu: 2, memory: 1Gi }, cost_per_hour: 0.5 }\n    - {}\n",
        )
        .unwrap();
        let plan = plan(&UpArgs { file: Some(file), base_port: Some(9000), ..args() }).unwrap();
        let ports = assign_ports(plan.ports, 2).unwrap();
        let setups = node_setups(&plan, dir.path(), &ports);
        assert_eq!(setups[1].name, "node-2");
        for setup in &setups {
            write_node_config(setup).unwrap();
        }
        let edge = NodeConfigDocument::load(&dir.path().join("edge/node.yaml")).unwrap();
        assert_eq!(edge, setups[0].config);
        assert_eq!(edge.api_addr, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(edge.transport_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(edge.seeds, ["127.0.0.1:9201".parse::<SocketAddr>().unwrap()]);
        assert_eq!(edge.data_dir.as_deref(), Some(dir.path().join("edge").as_path()));
        let resolved = edge.resolve(Resources::new(8000, 16 << 30)).unwrap();
        assert_eq!(resolved.capacity, Resources::new(2000, 1 << 30));
        assert_eq!((resolved.labels["zone"].as_str(), resolved.cost_per_hour), ("a", 0.5));
        let second = NodeConfigDocument::load(&dir.path().join("node-2/node.yaml")).unwrap();
        assert_eq!(second.gossip_addr, Some("127.0.0.1:9201".parse().unwrap()));
        assert_eq!(second.seeds, ["127.0.0.1:9200".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn a_provisioned_data_dir_is_reused_not_reprovisioned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let (plan, setups) = test_plan(&root, 3);
        assert_eq!(existing_mesh(&plan, &root).unwrap(), None, "nothing there yet");

        assert_eq!(prepare(&plan, &root, None).unwrap(), setups);
        let key = fs::read_to_string(root.join("node-2/node.key")).unwrap();
        let cert = fs::read_to_string(root.join("node-2/node.crt")).unwrap();

        // A restart with free ports keeps the ports it was provisioned with, and the identity.
        let restart = super::plan(&UpArgs { data_dir: Some(root.clone()), base_port: Some(0), ..args() }).unwrap();
        assert_eq!(prepare(&restart, &root, Some(0)).unwrap(), setups);
        assert_eq!(fs::read_to_string(root.join("node-2/node.key")).unwrap(), key);
        assert_eq!(fs::read_to_string(root.join("node-2/node.crt")).unwrap(), cert);

        // Other nodes, or another mesh name, are refused with a way out.
        let (bigger, _) = test_plan(&root, 4);
        let error = existing_mesh(&bigger, &root).unwrap_err().to_string();
        assert!(
            error.contains("holds a mesh of nodes node-1, node-2, node-3 but this plan has nodes node-1"),
            "{error}"
        );
        let mut renamed = plan.clone();
        renamed.name = "other".into();
        let error = existing_mesh(&renamed, &root).unwrap_err().to_string();
        assert!(error.contains("holds mesh local, not other"), "{error}");

        // A lost node.yaml names the file.
        fs::remove_file(root.join("node-3/node.yaml")).unwrap();
        let error = format!("{:#}", existing_mesh(&plan, &root).unwrap_err());
        assert!(error.contains("cannot restart node node-3"), "{error}");
        assert!(error.contains("node-3/node.yaml"), "{error}");
    }

    #[test]
    fn a_moved_data_dir_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (plan, _) = test_plan(&dir.path().join("a"), 1);
        prepare(&plan, &dir.path().join("a"), None).unwrap();
        fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        let setups = existing_mesh(&plan, &dir.path().join("b")).unwrap().unwrap();
        let config = NodeConfigDocument::load(&dir.path().join("b/node-1/node.yaml")).unwrap();
        assert_eq!(config.data_dir.as_deref(), Some(dir.path().join("b/node-1").as_path()));
        assert_eq!(setups[0].config, config);
    }

    #[test]
    fn mesh_json_names_every_node_and_the_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let (plan, setups) = test_plan(&root, 2);
        prepare(&plan, &root, None).unwrap();
        let mut record = mesh_record("local", &root, &setups, &[11, 12], 10).unwrap();
        let path = root.join(MESH_JSON);
        record.write(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["name"], "local");
        assert_eq!(json["pid"], 10);
        let node = &json["nodes"][1];
        assert_eq!(node["name"], "node-2");
        assert_eq!((&node["state"], &node["pid"]), (&serde_json::json!("running"), &serde_json::json!(12)));
        assert_eq!(node["api_url"], "https://127.0.0.1:20001");
        assert_eq!(node["transport_addr"], "127.0.0.1:20101");
        assert_eq!(node["gossip_addr"], "127.0.0.1:20201");
        assert_eq!(node["data_dir"], root.join("node-2").to_str().unwrap());
        assert_eq!(node["log"], root.join("node-2/node.log").to_str().unwrap());
        let key = mesh_files::load_or_create_key(&root.join("node-2")).unwrap();
        assert_eq!(node["id"], key.id().to_string());
        assert_eq!(json["ca_cert"], root.join("node-1/ca.crt").to_str().unwrap());

        let secret = fs::read_to_string(root.join("node-1/mesh.secret")).unwrap();
        assert!(json.get("join_token").is_none(), "join tokens come from `falak node admit`");
        assert!(!fs::read_to_string(&path).unwrap().contains(secret.trim()), "mesh.json holds no mesh secret");

        // The CLI finds the first node's API in it.
        assert_eq!(super::super::resolve_api(None, Some(&path)).unwrap(), "https://127.0.0.1:20000");
        let shell = |finds_mesh, falak: &str, path_hint: Option<&str>| Shell {
            falak: falak.to_owned(),
            finds_mesh,
            path_hint: path_hint.map(str::to_owned),
        };
        let text = render_endpoints(&record, &path, &shell(false, "falak", None));
        assert!(text.contains("mesh local is up: 2 nodes\nNAME    API                      PID  LOG\n"), "{text}");
        assert!(text.contains(&format!("try:\n  export FALAK_MESH={}\n  falak nodes\n", root.display())), "{text}");
        assert_eq!(json["token_file"], root.join("credentials/admin.token").to_str().unwrap());
        let token = super::super::resolve_token(None, Some(&path)).unwrap().expect("the CLI finds the admin token");
        assert!(token.starts_with("falak-token-v1."), "{token}");
        let mode = fs::metadata(root.join("credentials/admin.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin token is owner-only");
        assert!(!render_endpoints(&record, &path, &shell(true, "falak", None)).contains("export"));
        let text = render_endpoints(&record, &path, &shell(true, "/src/target/release/falak", Some("put it on PATH")));
        assert!(text.contains("try:\n  /src/target/release/falak nodes\n"), "{text}");
        assert!(text.contains("  /src/target/release/falak node admit "), "{text}");
        assert!(text.contains("note: put it on PATH\nCtrl-C stops the mesh.\n"), "{text}");

        // A node that exited is listed without a pid until it runs again.
        record.set_pid(1, None);
        record.write(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            (&json["nodes"][1]["state"], &json["nodes"][1]["pid"]),
            (&serde_json::json!("exited"), &serde_json::Value::Null)
        );
        assert_eq!(json["nodes"][0]["pid"], 11);
        assert!(
            render_endpoints(&record, &path, &shell(true, "falak", None))
                .contains("node-2  https://127.0.0.1:20001  -    ")
        );
    }

    #[test]
    fn a_live_earlier_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MESH_JSON);
        check_not_running(&path, 1).unwrap();
        let me = std::process::id();
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            child.wait().unwrap();
            child.id()
        };

        fs::write(&path, serde_json::json!({ "pid": me, "nodes": [] }).to_string()).unwrap();
        let error = check_not_running(&path, 1).unwrap_err().to_string();
        assert!(error.contains(&format!("another `falak up` (pid {me}) runs the mesh")), "{error}");
        check_not_running(&path, me).unwrap();

        let nodes = serde_json::json!([
            { "name": "node-1", "state": "running", "pid": dead },
            { "name": "node-2", "state": "running", "pid": me },
            { "name": "node-3", "state": "exited", "pid": null },
        ]);
        fs::write(&path, serde_json::json!({ "pid": dead, "nodes": nodes }).to_string()).unwrap();
        let error = check_not_running(&path, 1).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("nodes of an earlier `falak up` still run: node-2 (pid {me}); stop them first: `kill {me}`")
        );

        fs::write(&path, "not json").unwrap();
        check_not_running(&path, 1).unwrap();
    }

    #[test]
    fn one_up_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let lock = lock_data_dir(&root).unwrap();
        let error = lock_data_dir(&root).unwrap_err().to_string();
        assert!(error.starts_with("another `falak up` runs the mesh in"), "{error}");
        drop(lock);
        lock_data_dir(&root).unwrap();
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, &text).unwrap();
        assert_eq!(log_tail(&path, 2).unwrap(), "line 98\nline 99\n");
        fs::write(&path, "x".repeat(70_000) + "\nlast").unwrap();
        assert_eq!(log_tail(&path, 5).unwrap(), "last\n");
        fs::write(&path, "").unwrap();
        assert_eq!(log_tail(&path, 5).unwrap(), "");
    }

    #[test]
    fn the_demo_function_is_valid() {
        let doc = falak_core::function::FunctionDocument::parse(DEMO_FUNCTION).unwrap();
        assert_eq!(doc.name, "greet");
    }

    #[test]
    fn the_demo_capsule_is_valid() {
        let spec = falak_core::capsule::CapsuleDocument::parse(DEMO_CAPSULE).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.placement.max_attempts, 3);
    }

    #[test]
    fn tasks_are_counted_per_node() {
        let task = |index, node: Option<&str>| TaskInfo {
            id: TaskId { job: JobId(1), index },
            job: JobId(1),
            index,
            input: None,
            state: TaskState::Completed,
            attempt: 1,
            node: node.map(|name| NodeRef { id: NodeId([1; 32]), name: name.into() }),
            exit_code: Some(0),
            error: None,
            duration_ms: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            updated_at: 0,
        };
        let tasks = [task(0, Some("node-2")), task(1, Some("node-1")), task(2, Some("node-2")), task(3, None)];
        assert_eq!(tasks_per_node(&tasks), "(none) 1, node-1 1, node-2 2");
        assert_eq!(tasks_per_node(&[]), "no tasks");
    }
}
