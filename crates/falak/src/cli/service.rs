//! `falak service apply -f FILE | list | rm NAME`.

use std::path::PathBuf;

use clap::Subcommand;
use falak_api::service::ServiceInfo;

use super::Context;
use super::capsule::read_document;
use super::output::{Table, print_json, timestamp};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create or scale a service from a document: `{ name, capsule, version?, replicas }`.
    Apply {
        /// The document (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List services.
    List,
    /// Remove a service and stop its replicas.
    Rm { name: String },
}

pub async fn run(ctx: &Context, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Apply { file } => {
            let text = read_document(&file)?;
            let service =
                ctx.write_once("applying the service", async |client| client.apply_service_text(&text).await).await?;
            if ctx.json() {
                return print_json(&service);
            }
            println!(
                "service {}: {} replicas of {}:{} ({} running)",
                service.name, service.replicas, service.capsule, service.version, service.running
            );
            Ok(())
        }
        ServiceCommand::List => {
            let services = ctx.client.services().await?;
            if ctx.json() {
                return print_json(&services);
            }
            print!("{}", render_list(&services));
            Ok(())
        }
        ServiceCommand::Rm { name } => {
            let service = ctx.client.remove_service(&name).await?;
            if ctx.json() {
                return print_json(&service);
            }
            println!("removed service {}", service.name);
            Ok(())
        }
    }
}

pub fn render_list(services: &[ServiceInfo]) -> String {
    if services.is_empty() {
        return "no services; create one with `falak service apply -f FILE`\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "CAPSULE", "REPLICAS", "RUNNING", "JOB", "CREATED", "NODES"]);
    for s in services {
        let mut nodes: Vec<&str> = s
            .tasks
            .iter()
            .filter(|t| !t.state.is_terminal())
            .filter_map(|t| t.node.as_ref())
            .map(|n| n.name.as_str())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        table.row(vec![
            s.name.clone(),
            format!("{}:{}", s.capsule, s.version),
            s.replicas.to_string(),
            s.running.to_string(),
            s.job.to_string(),
            timestamp(s.created_at),
            if nodes.is_empty() { "-".to_owned() } else { nodes.join(",") },
        ]);
    }
    table.render()
}
