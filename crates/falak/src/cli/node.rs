//! `falak node`: run one node daemon in the foreground.

use std::path::PathBuf;

/// Run one node daemon.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Node config file (YAML).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Join an existing mesh with this join token.
    #[arg(long)]
    pub join: Option<String>,
}

pub async fn run(_args: NodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("falak node is being built")
}
