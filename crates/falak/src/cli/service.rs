//! `falak service apply -f FILE | list | show NAME | update NAME | rm NAME`.

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
    /// Show one service: its replicas and its last update.
    Show { name: String },
    /// Move a service to another capsule version a few replicas at a time; it rolls back by
    /// itself when the new version's replicas do not stay up.
    Update {
        name: String,
        /// The capsule version; the latest when absent.
        #[arg(long)]
        version: Option<u32>,
        /// Replicas that may be down at once.
        #[arg(long, default_value_t = 1)]
        max_unavailable: u32,
        /// Replicas that may run beyond the replica count.
        #[arg(long, default_value_t = 0)]
        max_surge: u32,
        /// How long a new replica must run to count as healthy.
        #[arg(long, default_value = "2s")]
        min_ready: String,
        /// How long the update may take before it is rolled back.
        #[arg(long, default_value = "5m")]
        deadline: String,
        /// Wait until the update is done or rolled back (exit status 1 when rolled back).
        #[arg(long)]
        wait: bool,
    },
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
        ServiceCommand::Show { name } => {
            let service = ctx.client.service(&name).await?;
            if ctx.json() {
                return print_json(&service);
            }
            print!("{}", render_list(std::slice::from_ref(&service)));
            if let Some(line) = rollout_line(&service) {
                println!("{line}");
            }
            Ok(())
        }
        ServiceCommand::Update { name, version, max_unavailable, max_surge, min_ready, deadline, wait } => {
            let request = falak_api::service::ServiceUpdateRequest {
                version,
                max_unavailable: Some(max_unavailable),
                max_surge: Some(max_surge),
                min_ready: Some(min_ready),
                deadline: Some(deadline),
            };
            let mut service = ctx
                .write_once("updating the service", async |client| client.update_service(&name, &request).await)
                .await?;
            if wait {
                while service.rollout.as_ref().is_some_and(|r| r.state == "progressing") {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    service = ctx.client.service(&name).await?;
                }
            }
            if ctx.json() {
                print_json(&service)?;
            } else if let Some(line) = rollout_line(&service) {
                println!("{line}");
            }
            if service.rollout.as_ref().is_some_and(|r| r.state == "rolled_back") {
                anyhow::bail!("service {name} was rolled back");
            }
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

/// What the service's last update did, in a line.
fn rollout_line(service: &ServiceInfo) -> Option<String> {
    let r = service.rollout.as_ref()?;
    let (from, to) = (r.from_version, r.to_version);
    Some(match r.state.as_str() {
        "progressing" => format!(
            "service {}: updating {}:{from} → {to} (max_unavailable {}, max_surge {}; {} of {} replicas running)",
            service.name, service.capsule, r.max_unavailable, r.max_surge, service.running, service.replicas
        ),
        "done" => format!("service {}: updated to {}:{to}", service.name, service.capsule),
        _ => format!(
            "service {}: update to version {to} rolled back to version {from}: {}",
            service.name,
            r.reason.as_deref().unwrap_or("no reason recorded")
        ),
    })
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
