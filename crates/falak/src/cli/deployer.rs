//! `falak deployer list | add NAME --public-key HEX | revoke ID` and `falak deployer-key FILE`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use falak_api::deployer::{DeployerInfo, TrustDeployer};
use falak_core::signing::{DeployerId, DeployerKey};

use super::Context;
use super::output::{Table, or_dash, print_json, timestamp};

#[derive(Debug, Subcommand)]
pub enum DeployerCommand {
    /// List the deployer keys the mesh trusts to sign capsules and functions.
    List,
    /// Trust a deployer key (admin).
    Add {
        /// Whose key it is, e.g. `ci`.
        name: String,
        /// Its Ed25519 public key, 64 hex characters (`falak deployer-key FILE` prints it).
        #[arg(long, value_parser = parse_id)]
        public_key: DeployerId,
    },
    /// Stop trusting a key, for good: nodes refuse what it signed from then on (admin).
    Revoke {
        #[arg(value_parser = parse_id)]
        id: DeployerId,
    },
}

fn parse_id(text: &str) -> Result<DeployerId, String> {
    text.parse()
}

pub async fn run(ctx: &Context, command: DeployerCommand) -> anyhow::Result<()> {
    match command {
        DeployerCommand::List => {
            let keys = ctx.client.deployers().await?;
            if ctx.json() {
                return print_json(&keys);
            }
            print!("{}", render_list(&keys));
            Ok(())
        }
        DeployerCommand::Add { name, public_key } => {
            let info = ctx.client.trust_deployer(&TrustDeployer { name, public_key }).await?;
            if ctx.json() {
                return print_json(&info);
            }
            println!("trusting deployer key {} ({})", info.id.short(), info.name);
            Ok(())
        }
        DeployerCommand::Revoke { id } => {
            let info = ctx.client.revoke_deployer(id).await?;
            if ctx.json() {
                return print_json(&info);
            }
            println!("revoked deployer key {} ({})", info.id.short(), info.name);
            Ok(())
        }
    }
}

/// `falak deployer-key FILE`: make a key pair without a mesh (no API call).
pub fn new_key(file: &PathBuf) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = DeployerKey::from_seed(rand::random());
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {} (it must not exist yet)", file.display()))?;
    out.write_all(key.to_pem().as_bytes()).with_context(|| format!("cannot write {}", file.display()))?;
    println!("{}", key.id());
    eprintln!(
        "wrote a new deployer key to {}; an admin trusts it with `falak deployer add NAME --public-key {}`",
        file.display(),
        key.id()
    );
    Ok(())
}

pub fn render_list(keys: &[DeployerInfo]) -> String {
    let mut table = Table::new(&["KEY", "NAME", "ADDED", "REVOKED"]);
    for k in keys {
        table.row(vec![k.id.to_string(), k.name.clone(), timestamp(k.added_at), or_dash(k.revoked_at.map(timestamp))]);
    }
    table.render()
}
