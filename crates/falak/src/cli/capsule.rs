//! `falak capsule apply -f FILE | list | show NAME`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use falak_api::capsule::{CapsuleInfo, CapsuleSummary};
use falak_core::capsule::CapsuleDocument;

use super::Context;
use super::output::{Table, bytes, cpu, duration, labels, or_dash, print_json, timestamp};

#[derive(Debug, Subcommand)]
pub enum CapsuleCommand {
    /// Apply a capsule document (YAML or JSON); a changed document becomes a new version.
    Apply {
        /// The document; `-` reads standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List capsules with their latest version.
    List,
    /// Show every version of one capsule.
    Show { name: String },
    /// Make an earlier version the latest again (as a new version with the same spec and
    /// signature); `falak service update` then moves services to it.
    Rollback {
        name: String,
        /// The version to bring back; the one before the latest when absent.
        #[arg(long = "to", value_name = "VERSION")]
        to: Option<u32>,
    },
}

pub async fn run(ctx: &Context, command: CapsuleCommand) -> anyhow::Result<()> {
    match command {
        CapsuleCommand::Apply { file } => {
            let text = read_document(&file)?;
            let applied = match CapsuleDocument::read(&text) {
                Ok(mut document) if needs_preparing(&document) => {
                    prepare(ctx, &file, &mut document).await?;
                    // The bundles are stored on this node (and the image pulled there): apply
                    // through it.
                    ctx.write_once_here("applying the capsule", async |client| client.apply_capsule(&document).await)
                        .await?
                }
                // Without code (or unreadable: the node's answer names what is wrong) as written.
                _ => {
                    ctx.write_once("applying the capsule", async |client| client.apply_capsule_text(&text).await)
                        .await?
                }
            };
            if ctx.json() {
                return print_json(&applied);
            }
            if applied.unchanged {
                println!("capsule {} unchanged (version {})", applied.name, applied.version);
            } else {
                println!("capsule {} version {} applied", applied.name, applied.version);
            }
            Ok(())
        }
        CapsuleCommand::Rollback { name, to } => {
            let applied = ctx.client.rollback_capsule(&name, to).await?;
            if ctx.json() {
                return print_json(&applied);
            }
            let from = to.map_or_else(|| "the previous version".to_owned(), |v| format!("version {v}"));
            if applied.unchanged {
                println!("capsule {name} version {} already is {from}", applied.version);
            } else {
                println!("capsule {name} version {} applied: {from} again", applied.version);
            }
            Ok(())
        }
        CapsuleCommand::List => {
            let capsules = ctx.client.capsules().await?;
            if ctx.json() {
                return print_json(&capsules);
            }
            print!("{}", render_list(&capsules));
            Ok(())
        }
        CapsuleCommand::Show { name } => {
            let capsule = ctx.client.capsule(&name).await?;
            if ctx.json() {
                return print_json(&capsule);
            }
            print!("{}", render_show(&capsule));
            Ok(())
        }
    }
}

/// Read a spec document from a file, or standard input for `-`.
pub fn read_document(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn render_list(capsules: &[CapsuleSummary]) -> String {
    if capsules.is_empty() {
        return "no capsules; apply one with `falak capsule apply -f FILE`\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "KIND", "VERSION", "VERSIONS", "CPU", "MEMORY", "UPDATED", "COMMAND"]);
    for c in capsules {
        table.row(vec![
            c.name.clone(),
            falak_core::capsule::kind_name(c.kind).to_owned(),
            c.latest_version.to_string(),
            c.versions.to_string(),
            cpu(c.resources.cpu_millis),
            bytes(c.resources.memory_bytes),
            timestamp(c.updated_at),
            super::output::short(&c.command.join(" "), 48),
        ]);
    }
    table.render()
}

/// Whether the document names something the CLI must upload or pin before it applies it: its
/// `source`, a mount's `source`, a container image by tag.
fn needs_preparing(document: &CapsuleDocument) -> bool {
    document.source.is_some()
        || document.mounts.iter().any(|m| m.source.is_some())
        || document.image.as_deref().is_some_and(|i| !falak_core::capsule::image_is_pinned(i))
}

/// Bundle and upload `source` and each mount's `source` (setting their `artifact`), and pin a
/// container image named by tag to the digest the node pulled.
async fn prepare(ctx: &Context, file: &std::path::Path, document: &mut CapsuleDocument) -> anyhow::Result<()> {
    let name = document.name.clone();
    // Bundle `source` (relative to the document) and store it on the node: its id.
    let upload = async |source: &str, what: String| -> anyhow::Result<falak_core::ArtifactId> {
        let bundle = super::function::bundle_source(file, source).await?;
        Ok(ctx.client.store_artifact(bundle).await.with_context(|| format!("cannot upload {what}"))?.id)
    };
    if let Some(source) = document.source.take() {
        document.artifact = Some(upload(&source, format!("the code of capsule {name}")).await?);
    }
    for mount in &mut document.mounts {
        if let Some(source) = mount.source.take() {
            let what = format!("{source}, mounted at {} in capsule {name}", mount.path);
            mount.artifact = Some(upload(&source, what).await?);
        }
    }
    if let Some(image) = document.image.as_deref() {
        document.image = Some(pin_image(ctx, image, &format!("capsule {name}")).await?);
    }
    Ok(())
}

/// `image` pinned to a digest: as it is when it names one, else pulled on the node the CLI
/// talks to, which says the digest it got (`what` names the workload in errors).
pub(super) async fn pin_image(ctx: &Context, image: &str, what: &str) -> anyhow::Result<String> {
    if falak_core::capsule::image_is_pinned(image) {
        return Ok(image.to_owned());
    }
    let pulled =
        ctx.client.pull_image(image).await.with_context(|| format!("cannot pull the image {image} of {what}"))?;
    if !ctx.json() {
        eprintln!("image {} is {}", pulled.name, pulled.digest);
    }
    Ok(format!("{}@{}", pulled.name, pulled.digest))
}

pub fn render_show(capsule: &CapsuleInfo) -> String {
    let mut out = String::new();
    for (i, v) in capsule.versions.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let s = &v.spec;
        let p = &s.placement;
        out.push_str(&format!("{} version {} (applied {})\n", capsule.name, v.version, timestamp(v.created_at)));
        out.push_str(&format!("  kind:       {}\n", falak_core::capsule::kind_name(s.kind)));
        out.push_str(&format!("  command:    {}\n", serde_json::to_string(&s.command).unwrap_or_default()));
        if let Some(artifact) = s.artifact {
            out.push_str(&format!("  code:       bundle {artifact}\n"));
        }
        if let Some(container) = &s.container {
            out.push_str(&format!("  image:      {}\n", container.image));
            if !container.args.is_empty() {
                out.push_str(&format!(
                    "  args:       {}\n",
                    serde_json::to_string(&container.args).unwrap_or_default()
                ));
            }
            if let Some(workdir) = &container.workdir {
                out.push_str(&format!("  workdir:    {workdir}\n"));
            }
            if let Some(user) = &container.user {
                out.push_str(&format!("  user:       {user}\n"));
            }
            for mount in &container.mounts {
                out.push_str(&format!("  mount:      bundle {} at {} (read-only)\n", mount.artifact, mount.path));
            }
        }
        out.push_str(&format!("  resources:  {}, disk {}\n", s.resources, bytes(s.disk_limit_bytes())));
        out.push_str(&format!(
            "  placement:  strategy {}, labels {}, prefer {}, max attempts {}\n",
            p.strategy.name(),
            labels(&p.labels),
            labels(&p.prefer),
            p.max_attempts
        ));
        out.push_str(&format!("  timeout:    {}\n", or_dash(s.timeout_ms.map(duration))));
        out.push_str(&format!("  env:        {}\n", labels(&s.env)));
        out.push_str(&format!("  tags:       {}\n", labels(&s.tags)));
    }
    if let Some(code) = &capsule.code {
        let holders = if code.held_by.is_empty() { "no node yet".to_owned() } else { code.held_by.join(", ") };
        out.push_str(&format!("\ncode {} of the latest version held by: {holders}\n", code.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use falak_core::capsule::{CapsuleDocument, CapsuleVersion};

    use super::*;

    #[test]
    fn show_lists_every_version() {
        let spec = CapsuleDocument::parse(
            "name: hello\nkind: process\ncommand: [/bin/echo, hi]\nresources: { cpu: 100m, memory: 32Mi }\ntimeout: 30s\nenv: { A: b }",
        )
        .unwrap();
        let info = CapsuleInfo {
            name: "hello".into(),
            versions: vec![CapsuleVersion { version: 1, spec: spec.clone(), created_at: 0, signature: None }],
            code: None,
        };
        expect_test::expect![[r#"
            hello version 1 (applied 1970-01-01T00:00:00Z)
              kind:       process
              command:    ["/bin/echo","hi"]
              resources:  cpu 100m, memory 32Mi, disk 1Gi
              placement:  strategy balanced, labels -, prefer -, max attempts 3
              timeout:    30s
              env:        A=b
              tags:       -
        "#]]
        .assert_eq(&render_show(&info));
    }
}
