//! `falak up`: a local mesh of real node processes on loopback.

use std::path::PathBuf;

/// Run a local mesh on loopback in the foreground.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Cluster file (YAML) describing the mesh.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Where node data dirs and mesh.json go.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run a demo job and invoke once the mesh is up, print the result, keep running.
    #[arg(long)]
    pub demo: bool,
}

pub async fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("falak up is being built")
}
