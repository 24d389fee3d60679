//! `falak node`: run one node daemon in the foreground; `falak node admit | tokens |
//! revoke-token | revoke` let nodes in and throw them out (admin).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use falak_node::config::NodeConfigDocument;

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
    /// Data dir: node key, certificates, ledger, task directories.
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

fn init_tracing() {
    super::logging::init_node_logging();
}
