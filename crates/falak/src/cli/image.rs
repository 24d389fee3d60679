//! `falak image import FILE | pull REF | list | inspect IMAGE | rm IMAGE`: the images of the
//! node the CLI talks to.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use falak_api::image::{ImageDetails, ImageInfo};

use super::Context;
use super::output::{Table, bytes, print_json};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (a directory, or a tar of one) or a `docker save` archive;
    /// prints each image's name and digest.
    Import {
        file: PathBuf,
        /// Name the image (e.g. `registry.local/app:v1`); the archive must hold one image.
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull an image: its blobs from peers that hold them, else from the registry.
    Pull { reference: String },
    /// List this node's images.
    List,
    /// Show one image: a name, `sha256:<hex>` or a digest prefix of 12 or more characters.
    Inspect { image: String },
    /// Remove a name (or, given a digest, every name of it); unused blobs go later.
    Rm { image: String },
}

pub async fn run(ctx: &Context, command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import { file, name } => {
            if !file.exists() {
                anyhow::bail!("{} does not exist", file.display());
            }
            let archive = if file.is_dir() { tar_layout(&file)? } else { file.clone() };
            let imported = ctx
                .client
                .import_image(&archive, name.as_deref())
                .await
                .with_context(|| format!("cannot import {}", file.display()));
            if archive != file {
                let _ = std::fs::remove_file(&archive);
            }
            let imported = imported?;
            if ctx.json() {
                return print_json(&imported);
            }
            for image in &imported {
                let names =
                    if image.names.is_empty() { "(no name: pass --name)".to_owned() } else { image.names.join(", ") };
                println!("imported {names} {}", image.digest);
            }
            Ok(())
        }
        ImageCommand::Pull { reference } => {
            let pulled = ctx.client.pull_image(&reference).await.with_context(|| format!("cannot pull {reference}"))?;
            if ctx.json() {
                return print_json(&pulled);
            }
            println!(
                "pulled {} {} ({} blobs from the registry, {}; {} from peers; {} already here)",
                pulled.name,
                pulled.digest,
                pulled.registry_blobs,
                bytes(pulled.registry_bytes),
                pulled.peer_blobs,
                pulled.held_blobs
            );
            Ok(())
        }
        ImageCommand::List => {
            let images = ctx.client.images().await?;
            if ctx.json() {
                return print_json(&images);
            }
            print!("{}", render_list(&images));
            Ok(())
        }
        ImageCommand::Inspect { image } => {
            let details = ctx.client.image(&image).await?;
            if ctx.json() {
                return print_json(&details);
            }
            print!("{}", render_details(&details));
            Ok(())
        }
        ImageCommand::Rm { image } => {
            let removed = ctx.client.remove_image(&image).await?;
            if ctx.json() {
                return print_json(&removed);
            }
            println!("removed {} ({})", removed.names.join(", "), removed.digest);
            Ok(())
        }
    }
}

/// A directory (an OCI image layout) is sent as a tar of it, made in the temp dir.
fn tar_layout(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("falak-image-{}.tar", std::process::id()));
    let file = std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).with_context(|| format!("cannot read {}", dir.display()))?;
    builder.finish().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub fn render_list(images: &[ImageInfo]) -> String {
    if images.is_empty() {
        return "no images on this node; `falak image pull REF` or `falak image import FILE`\n".to_owned();
    }
    let mut table = Table::new(&["NAME", "DIGEST", "SIZE", "LAYERS", "PLATFORM"]);
    for image in images {
        let short = image.digest.strip_prefix("sha256:").unwrap_or(&image.digest).chars().take(12).collect::<String>();
        let names = if image.names.is_empty() { vec!["-".to_owned()] } else { image.names.clone() };
        for name in names {
            table.row(vec![name, short.clone(), bytes(image.size), image.layers.to_string(), image.platform.clone()]);
        }
    }
    table.render()
}

pub fn render_details(d: &ImageDetails) -> String {
    let mut out = String::new();
    out.push_str(&format!("digest:      {}\n", d.image.digest));
    out.push_str(&format!(
        "names:       {}\n",
        if d.image.names.is_empty() { "-".into() } else { d.image.names.join(", ") }
    ));
    out.push_str(&format!("platform:    {}\n", d.image.platform));
    out.push_str(&format!("size:        {}\n", bytes(d.image.size)));
    out.push_str(&format!("entrypoint:  {}\n", serde_json::to_string(&d.entrypoint).unwrap_or_default()));
    out.push_str(&format!("cmd:         {}\n", serde_json::to_string(&d.cmd).unwrap_or_default()));
    out.push_str(&format!("workdir:     {}\n", d.working_dir.as_deref().unwrap_or("-")));
    out.push_str(&format!("user:        {}\n", d.user.as_deref().unwrap_or("-")));
    out.push_str(&format!("config:      {}\n", d.config_digest));
    out.push_str("layers:\n");
    for layer in &d.layers {
        out.push_str(&format!("  {}  {}  {}\n", layer.digest, bytes(layer.size), layer.media_type));
    }
    out
}
