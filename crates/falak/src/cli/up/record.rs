//! `mesh.json`: what a running `falak up` records for the CLI and for the next `falak up`.

use super::*;

/// `DATA_DIR/mesh.json`: the running mesh, for the CLI and for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct MeshRecord {
    name: String,
    /// The `falak up` process.
    pid: u32,
    nodes: Vec<MeshRecordNode>,
    /// The mesh CA certificate.
    ca_cert: PathBuf,
    /// The admin token (0600), which the CLI sends when no `--token` is given.
    token_file: PathBuf,
    /// The deployer key (0600) the CLI signs capsules and functions with.
    deployer_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct MeshRecordNode {
    name: String,
    /// The node id: its public key, hex.
    id: String,
    state: NodeState,
    /// The node's process while it runs (started by `falak up` or by hand), else null.
    pid: Option<u32>,
    api_url: String,
    transport_addr: String,
    gossip_addr: String,
    data_dir: PathBuf,
    log: PathBuf,
}

/// Whether a node of the mesh runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum NodeState {
    Running,
    Exited,
}

impl MeshRecord {
    /// Node `index`'s process: its pid while it runs, `None` once it has exited.
    pub(super) fn set_pid(&mut self, index: usize, pid: Option<u32>) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.pid = pid;
            node.state = if pid.is_some() { NodeState::Running } else { NodeState::Exited };
        }
    }

    pub(super) fn pids(&self) -> impl Iterator<Item = Option<u32>> + '_ {
        self.nodes.iter().map(|n| n.pid)
    }

    /// Write it to `path`, whole or not at all, owner-only (it names the credentials).
    pub(super) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("cannot render mesh.json")? + "\n";
        write_atomic(path, text.as_bytes(), 0o600)
    }
}

/// The record of a mesh whose nodes run as `pids`.
pub(super) fn mesh_record(
    mesh: &str,
    root: &Path,
    setups: &[NodeSetup],
    pids: &[u32],
    up_pid: u32,
) -> anyhow::Result<MeshRecord> {
    let first = setups.first().context("a mesh has at least one node")?;
    let mut nodes = Vec::new();
    for (setup, pid) in setups.iter().zip(pids) {
        let key = mesh_files::load_or_create_key(&setup.dir)
            .with_context(|| format!("cannot read the key of node {}", setup.name))?;
        nodes.push(MeshRecordNode {
            name: setup.name.clone(),
            id: key.id().to_string(),
            state: NodeState::Running,
            pid: Some(*pid),
            api_url: setup.api_url(),
            transport_addr: setup.transport.to_string(),
            gossip_addr: setup.gossip.to_string(),
            data_dir: setup.dir.clone(),
            log: setup.log_path(),
        });
    }
    Ok(MeshRecord {
        name: mesh.to_owned(),
        pid: up_pid,
        nodes,
        ca_cert: first.dir.join("ca.crt"),
        token_file: root.join(mesh_files::CREDENTIALS_DIR).join("admin.token"),
        deployer_key_file: root.join(mesh_files::CREDENTIALS_DIR).join("deployer.key"),
    })
}

/// Write then rename, so readers never see half a file.
pub(in crate::cli) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// What the printed commands need to know about the shell they are typed into.
pub(super) struct Shell {
    /// How to run this binary: `falak`, or its path when PATH does not find it as `falak`.
    pub(super) falak: String,
    /// Whether commands run from the current directory use this mesh.
    pub(super) finds_mesh: bool,
    /// How to put `falak` on PATH, when it is not there.
    pub(super) path_hint: Option<String>,
}

impl Shell {
    /// The shell `falak up` was started from, for the mesh in `root`.
    pub(super) fn here(root: &Path) -> Shell {
        Shell { falak: crate::cli::self_command(), finds_mesh: cli_finds(root), path_hint: crate::cli::path_hint() }
    }
}

/// Whether plain `falak` commands run from the current directory use the mesh in `root`
/// (through `FALAK_MESH`, a `.falak` above, or the current mesh).
fn cli_finds(root: &Path) -> bool {
    let Ok(start) = std::env::current_dir() else { return false };
    let flag = std::env::var_os("FALAK_MESH").filter(|v| !v.is_empty()).map(PathBuf::from);
    let config_dir = crate::cli::mesh::config_dir();
    let search = crate::cli::mesh::Search { flag: flag.as_deref(), start: &start, config_dir: config_dir.as_deref() };
    crate::cli::mesh::locate(search).is_ok_and(|found| found.dir == root)
}

/// The endpoints and what to try next.
pub(super) fn render_endpoints(record: &MeshRecord, mesh_file: &Path, shell: &Shell) -> String {
    let mut table = Table::new(&["NAME", "API", "PID", "LOG"]);
    for node in &record.nodes {
        let (name, api, log) = (node.name.clone(), node.api_url.clone(), node.log.display().to_string());
        table.row(vec![name, api, or_dash(node.pid), log]);
    }
    let mut out = format!("\nmesh {} is up: {}\n", record.name, count(record.nodes.len()));
    out.push_str(&table.render());
    out.push_str(&format!("mesh file: {} (node ids, CA, credentials)\n\ntry:\n", mesh_file.display()));
    if !shell.finds_mesh
        && let Some(root) = mesh_file.parent()
    {
        out.push_str(&format!("  export FALAK_MESH={}\n", root.display()));
    }
    let falak = &shell.falak;
    out.push_str(&format!("  {falak} nodes\n"));
    out.push_str(&format!("  {falak} capsule apply -f capsule.yaml\n"));
    out.push_str(&format!("  {falak} job submit CAPSULE --tasks 12 --wait\n"));
    out.push_str(&format!("  {falak} node admit        (a join token for another machine's node)\n"));
    if let Some(hint) = &shell.path_hint {
        out.push_str(&format!("note: {hint}\n"));
    }
    out.push_str("Ctrl-C stops the mesh.\n");
    out
}
