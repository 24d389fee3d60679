//! `falak node`: run one node daemon in the foreground.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use falak_node::config::NodeConfigDocument;

/// Run one node daemon.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node config file (YAML); flags override it.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Join an existing mesh with this join token (`join_token` in `mesh.json`); ignored when
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,quinn=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
