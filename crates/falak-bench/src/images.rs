//! `images`: one image (50 MiB of incompressible data, 8 MiB with `--quick`) in a local
//! `docker-registry`, pulled on each node of a 3-node mesh in turn. The registry's access log
//! says how many blob bytes it served; the first node's pull is timed beside the floor, a plain
//! HTTP GET of the same blobs from the registry in the same run; the later nodes take the blobs
//! from peers.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use falak_artifact::Sha256Digest;

use crate::benches::{Ctx, within};
use crate::mesh::MeshOptions;
use crate::registry::{Registry, build_layout, layer, noise, push};
use crate::report::{Row, Verdict};
use crate::stats::{Samples, fmt_mib, fmt_ratio, fmt_secs};

pub(crate) async fn images(ctx: &Ctx) -> Result<Vec<Row>> {
    const NAME: &str = "image-registry-bytes";
    let size = ctx.pick(50 << 20, 8 << 20);
    println!("\n== images: one {} image pulled on 3 nodes from a local docker-registry", fmt_mib(size as u64));
    let registry = Registry::start()?;
    let layout = ctx.root.join("images-layout");
    let data = noise(size, 42);
    let built = build_layout(&layout, "v1", &[layer(&[("data/blob.bin", &data)]), layer(&[("bin/hello", b"hi\n")])])?;
    push(&layout, "v1", &registry, "app")?;
    let image_bytes: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .filter(|e| e.file_name().to_str() != Some(&built.manifest.hex()))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    let before = registry.blob_bytes("app");

    // Floor: the blobs straight from the registry over plain HTTP, three times.
    let http = reqwest::Client::new();
    let mut floor = Samples::new();
    let blobs: Vec<Sha256Digest> = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .filter_map(|e| format!("sha256:{}", e.file_name().to_str()?).parse().ok())
        .filter(|d| *d != built.manifest)
        .collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        for blob in &blobs {
            let url = format!("http://{}/v2/app/blobs/{blob}", registry.addr);
            let body = http.get(&url).send().await?.error_for_status()?.bytes().await?;
            anyhow::ensure!(Sha256Digest::of(&body) == *blob, "the registry sent other bytes for {blob}");
        }
        floor.push(t0.elapsed());
    }
    let floor_bytes = registry.blob_bytes("app") - before;
    let before = registry.blob_bytes("app");

    let options = MeshOptions { insecure_registries: vec![registry.addr.clone()], ..MeshOptions::new(3) };
    let mesh = ctx.mesh_with("images", options).await?;
    let reference = format!("{}/app:v1", registry.addr);
    let mut pulls = Vec::new();
    for (i, node) in mesh.nodes.iter().enumerate() {
        let t0 = Instant::now();
        let pulled = within(Duration::from_secs(300), format!("pulling on {}", node.name), async {
            node.client.pull_image(&reference).await.with_context(|| format!("pulling {reference} on {}", node.name))
        })
        .await?;
        let took = t0.elapsed().as_secs_f64();
        println!(
            "  {}: {} ({} blobs from the registry, {} from peers)",
            node.name,
            fmt_secs(took),
            pulled.registry_blobs,
            pulled.peer_blobs
        );
        anyhow::ensure!(pulled.digest == built.manifest.to_string(), "node {i} pulled {}", pulled.digest);
        pulls.push((took, pulled.registry_blobs, pulled.peer_blobs));
    }
    let served = registry.blob_bytes("app") - before;
    println!(
        "  registry served {} of blobs for 3 nodes; the image's blobs are {}; floor: GET of them {} (p50 of 3)",
        fmt_mib(served),
        fmt_mib(image_bytes),
        fmt_secs(floor.p50())
    );
    let ratio = served as f64 / image_bytes as f64;
    let pass = ratio <= 1.1;
    Ok(vec![Row {
        name: NAME.into(),
        measured: format!(
            "{} served for 3 nodes; pulls {} (registry), {} and {} (peers)",
            fmt_mib(served),
            fmt_secs(pulls[0].0),
            fmt_secs(pulls[1].0),
            fmt_secs(pulls[2].0)
        ),
        floor: format!("image {}; plain GET of its blobs {}", fmt_mib(image_bytes), fmt_secs(floor.p50())),
        ratio: format!("{ratio:.2}× the image; first pull {} the GET", fmt_ratio(pulls[0].0, floor.p50())),
        target: "≈ 1× the image for 3 nodes".into(),
        verdict: Verdict::of(pass),
        reason: format!("the registry served {ratio:.2}× the image's blob bytes for 3 pulls"),
        data: serde_json::json!({
            "image_bytes": image_bytes,
            "registry_bytes": served,
            "floor_get_secs": floor.json(),
            "floor_bytes": floor_bytes,
            "pull_secs": pulls.iter().map(|p| p.0).collect::<Vec<_>>(),
            "registry_blobs": pulls.iter().map(|p| p.1).collect::<Vec<_>>(),
            "peer_blobs": pulls.iter().map(|p| p.2).collect::<Vec<_>>(),
        }),
    }])
}
