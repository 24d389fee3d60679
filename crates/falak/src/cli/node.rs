//! `falak node`: run one node daemon in the foreground; `falak node admit | tokens |
//! revoke-token | revoke` let nodes in and throw them out (admin).
//!
//! While it runs, a node names itself in `DATA_DIR/node.pid` (its pid and start time), which
//! is how `falak up` follows a node started by hand; the file goes when the node stops.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use falak_node::config::NodeConfigDocument;
use serde::{Deserialize, Serialize};

/// Run one node daemon, or admit and revoke nodes.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
    /// Node config file (YAML); flags override it.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Join an existing mesh with this join token (`falak node admit` prints one); ignored when
    /// the data dir already belongs to a mesh.
    #[arg(long, env = "FALAK_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Node name.
    #[arg(long)]
    pub name: Option<String>,
    /// Data dir: node key, certificates, ledger, task directories, and `node.pid` while the
    /// node runs.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// QUIC listen address for node-to-node protocols.
    #[arg(long)]
    pub transport_addr: Option<SocketAddr>,
    /// UDP listen address for membership.
    #[arg(long)]
    pub gossip_addr: Option<SocketAddr>,
    /// A label, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Membership address of a node to join through; repeatable.
    #[arg(long = "seed")]
    pub seeds: Vec<SocketAddr>,
    /// Cost per hour of this node, for the cost term of gravity.
    #[arg(long)]
    pub cost_per_hour: Option<f64>,
}

/// Admission of nodes (admin).
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Make a join token and print it: a new node starts with `falak node --join TOKEN`. It
    /// admits `--uses` nodes until `--ttl` runs out; it is shown only this once.
    Admit {
        /// How long the token admits nodes, e.g. `30m`, `12h` (at most 30 days).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: std::time::Duration,
        /// How many nodes it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Revoke a node for good: every node refuses it within seconds (open connections
    /// included) and its tasks fail over. Its key is never admitted again.
    Revoke {
        /// The node's name or id, as `falak nodes` shows it.
        node: String,
    },
    /// List the join tokens the mesh keeps (never their secrets): uses, who joined, expiry.
    Tokens,
    /// Revoke a join token: it admits no one from now on.
    RevokeToken {
        /// The token's id, as `falak node tokens` shows it.
        id: falak_core::access::TokenId,
    },
}

/// The join tokens as a table.
pub fn render_tokens(tokens: &[falak_api::join::JoinTokenInfo]) -> String {
    use super::output::{Table, timestamp};
    let mut table = Table::new(&["ID", "STATE", "USED", "CREATED", "EXPIRES", "JOINED"]);
    for t in tokens {
        let joined: Vec<&str> = t.joined.iter().map(|n| n.name.as_str()).collect();
        table.row(vec![
            t.id.to_string(),
            t.state.clone(),
            format!("{}/{}", t.joined.len(), t.uses),
            timestamp(t.created_at),
            timestamp(t.expires_at),
            if joined.is_empty() { "-".to_owned() } else { joined.join(",") },
        ]);
    }
    table.render()
}

/// `falak node admit | revoke`.
pub async fn admin(ctx: &super::Context, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Admit { ttl, uses } => {
            let request =
                falak_api::join::CreateJoinToken { ttl_seconds: Some(ttl.as_secs().max(1)), uses: Some(uses) };
            let created = ctx.client.create_join_token(&request).await.context("cannot make a join token")?;
            if ctx.json() {
                return super::output::print_json(&created);
            }
            println!("{}", created.join_token);
            eprintln!(
                "join token {}: admits {} node(s) until {}; start a node with `falak node --join TOKEN` (it is not shown again)",
                created.id,
                created.uses,
                super::output::timestamp(created.expires_at)
            );
            Ok(())
        }
        NodeCommand::Tokens => {
            let tokens = ctx.client.join_tokens().await?;
            if ctx.json() {
                return super::output::print_json(&tokens);
            }
            print!("{}", render_tokens(&tokens));
            Ok(())
        }
        NodeCommand::RevokeToken { id } => {
            let token = ctx.client.revoke_join_token(id).await.with_context(|| format!("cannot revoke {id}"))?;
            if ctx.json() {
                return super::output::print_json(&token);
            }
            println!("revoked join token {}: it admits no one from now on", token.id);
            Ok(())
        }
        NodeCommand::Revoke { node } => {
            let revoked = ctx.client.revoke_node(&node).await.with_context(|| format!("cannot revoke {node}"))?;
            if ctx.json() {
                return super::output::print_json(&revoked);
            }
            println!("revoked node {} ({}): the mesh refuses it from now on", revoked.name, revoked.id.short());
            Ok(())
        }
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("label {text:?} is not key=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// The config file with the flags applied on top.
pub fn document(args: &NodeArgs) -> anyhow::Result<NodeConfigDocument> {
    let mut doc = match &args.config {
        Some(path) => NodeConfigDocument::load(path)?,
        None => NodeConfigDocument::default(),
    };
    if let Some(v) = &args.name {
        doc.name = Some(v.clone());
    }
    if let Some(v) = &args.data_dir {
        doc.data_dir = Some(v.clone());
    }
    doc.api_addr = args.api_addr.or(doc.api_addr);
    doc.transport_addr = args.transport_addr.or(doc.transport_addr);
    doc.gossip_addr = args.gossip_addr.or(doc.gossip_addr);
    doc.cost_per_hour = args.cost_per_hour.or(doc.cost_per_hour);
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    doc.labels.extend(labels);
    doc.seeds.extend(args.seeds.iter().copied());
    Ok(doc)
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    init_tracing();
    let doc = document(&args)?;
    let config = doc.resolve(falak_node::host::detect_capacity())?;
    // Written before the join, so two nodes never join or run on one data dir at once.
    let _pid_file = PidFile::create(&config.data_dir)?;
    if let Some(token) = &args.join {
        falak_node::join::join(&config, token).await.context("joining the mesh")?;
    }
    let data_dir = config.data_dir.clone();
    falak_node::daemon::run(config, shutdown_signal())
        .await
        .with_context(|| format!("node with data dir {}", data_dir.display()))?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

// The pid file.

/// `DATA_DIR/node.pid`: the node that runs on the data dir, while it runs.
pub const PID_FILE: &str = "node.pid";

/// One process, named by its pid and its start time (clock ticks after boot, field 22 of
/// `/proc/PID/stat`). The pair still tells a process apart once it has ended and another
/// program got its pid, which a pid alone cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProcess {
    pub pid: u32,
    pub start_time: u64,
}

impl NodeProcess {
    /// The process `pid` names now, if one runs (a zombie does not).
    pub fn of(pid: u32) -> Option<NodeProcess> {
        start_time(pid).map(|start_time| NodeProcess { pid, start_time })
    }

    /// The node running on `dir`, as its pid file names it: `None` without a pid file, or
    /// when the process it names has ended (a node killed with `kill -9` leaves its file, and
    /// its pid may be another program's by now).
    pub fn running_in(dir: &Path) -> Option<NodeProcess> {
        Self::named_in(&dir.join(PID_FILE)).filter(NodeProcess::alive)
    }

    fn named_in(pid_file: &Path) -> Option<NodeProcess> {
        serde_json::from_str(&fs::read_to_string(pid_file).ok()?).ok()
    }

    /// Whether this very process still runs: its pid is live, not a zombie, and started when
    /// this one did.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// Send `signal` to this process if it still runs: `Ok(false)` when it has ended.
    pub fn signal(&self, signal: i32) -> std::io::Result<bool> {
        if !self.alive() {
            return Ok(false);
        }
        // Between the check and the kill the pid could only change hands if the process ended
        // and the kernel handed out every other pid in that instant.
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(self.pid as i32, signal) } == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) { Ok(false) } else { Err(error) }
    }
}

/// The start time in `/proc/PID/stat`, or `None` when no such process runs or it is a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 3 was the state; field 22 is the start time.
    fields.nth(18)?.parse().ok()
}

/// This process's pid file, removed when it is dropped as the node stops.
struct PidFile {
    path: PathBuf,
    process: NodeProcess,
}

impl PidFile {
    /// Name this process in `dir/node.pid` (written whole or not at all); refuse when another
    /// node runs on `dir`.
    fn create(dir: &Path) -> anyhow::Result<PidFile> {
        let process = NodeProcess::of(std::process::id())
            .context("cannot read this process's start time from /proc/self/stat; is /proc mounted?")?;
        if let Some(other) = NodeProcess::running_in(dir).filter(|other| other.pid != process.pid) {
            bail!(
                "another node (pid {pid}) runs on the data dir {}; stop it first (`kill {pid}`) or pick another data dir",
                dir.display(),
                pid = other.pid
            );
        }
        falak_node::mesh_files::make_data_dir(dir)?;
        let path = dir.join(PID_FILE);
        let text = serde_json::to_string(&process).context("cannot render the pid file")? + "\n";
        super::up::write_atomic(&path, text.as_bytes(), 0o644)?;
        Ok(PidFile { path, process })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only this node's own file goes; one another node wrote since stays.
        if NodeProcess::named_in(&self.path) == Some(self.process) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn init_tracing() {
    super::logging::init_node_logging();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid that runs no process now (a child that has been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    #[test]
    fn a_pid_file_counts_only_while_its_very_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let me = NodeProcess::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert_eq!(NodeProcess::running_in(dir.path()), None, "no pid file");

        let write = |process: NodeProcess| {
            fs::write(dir.path().join(PID_FILE), serde_json::to_string(&process).unwrap()).unwrap();
        };
        write(me);
        assert_eq!(NodeProcess::running_in(dir.path()), Some(me));
        // A stale file whose pid now belongs to another program (here: this one) does not count.
        write(NodeProcess { start_time: me.start_time + 1, ..me });
        assert_eq!(NodeProcess::running_in(dir.path()), None);
        write(NodeProcess { pid: dead_pid(), ..me });
        assert_eq!(NodeProcess::running_in(dir.path()), None);
        fs::write(dir.path().join(PID_FILE), "12").unwrap();
        assert_eq!(NodeProcess::running_in(dir.path()), None, "not a pid file of ours");

        let stale = NodeProcess { pid: dead_pid(), ..me };
        assert!(!stale.alive());
        assert!(!stale.signal(0).unwrap(), "an ended process is not signalled");
        assert!(me.signal(0).unwrap());
    }

    #[test]
    fn a_zombie_has_ended() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie until `wait`.
        for _ in 0..500 {
            if fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z ") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(NodeProcess::of(pid), None);
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn the_pid_file_names_this_node_until_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let path = data.join(PID_FILE);
        // A stale file (kill -9) is replaced.
        fs::create_dir_all(&data).unwrap();
        let me = NodeProcess::of(std::process::id()).unwrap();
        fs::write(&path, serde_json::to_string(&NodeProcess { pid: dead_pid(), ..me }).unwrap()).unwrap();
        let file = PidFile::create(&data).unwrap();
        assert_eq!(NodeProcess::running_in(&data), Some(me));
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        drop(file);
        assert!(!path.exists(), "removed when the node stops");

        // Another live node on the data dir is refused, and its file stays.
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let running = NodeProcess::of(other.id()).unwrap();
        fs::write(&path, serde_json::to_string(&running).unwrap()).unwrap();
        let error = PidFile::create(&data).err().unwrap().to_string();
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(
            error,
            format!(
                "another node (pid {pid}) runs on the data dir {}; stop it first (`kill {pid}`) or pick another data dir",
                data.display(),
                pid = running.pid
            )
        );
        assert_eq!(NodeProcess::named_in(&path), Some(running));
    }
}
