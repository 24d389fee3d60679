//! Issue 11's images against a real registry: Debian's `docker-registry` on a loopback port,
//! images the test builds (an OCI layout written here, pushed with `skopeo`), three real nodes.
//! The first pull reaches the registry once per blob; a second node gets every blob from the
//! first (the registry's access log is counted); a blob whose bytes the registry's disk no
//! longer matches is refused; a layer that escapes the root is refused; an archive imports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use falak_bench::mesh::{Mesh, MeshOptions};
use falak_bench::registry::{Registry, build_layout, layer, noise, push};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_falak"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_asks_the_registry_once_and_refuses_wrong_bytes_and_escaping_layers() {
    let registry = Registry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let big = noise(4 << 20, 7);
    let app = build_layout(
        &work.path().join("app"),
        "v1",
        &[layer(&[("data/big.bin", &big)]), layer(&[("bin/hello", b"#!/bin/sh\necho hello\n")])],
    )
    .unwrap();
    push(&work.path().join("app"), "v1", &registry, "app").unwrap();
    let evil = build_layout(&work.path().join("evil"), "v1", &[layer(&[("../escaped", b"x")])]).unwrap();
    push(&work.path().join("evil"), "v1", &registry, "evil").unwrap();
    let bad = build_layout(&work.path().join("bad"), "v1", &[layer(&[("data/x", &noise(1 << 20, 9))])]).unwrap();
    push(&work.path().join("bad"), "v1", &registry, "bad").unwrap();
    let gets_after_push = registry.blob_gets("app");

    let options = MeshOptions { insecure_registries: vec![registry.addr.clone()], ..MeshOptions::new(3) };
    let mut mesh = Mesh::start(binary(), &work.path().join("mesh"), &options).unwrap();
    mesh.wait_ready(Duration::from_secs(60)).await.unwrap();
    mesh.wait_all_healthy(Duration::from_secs(30)).await.unwrap();
    let reference = format!("{}/app:v1", registry.addr);

    // The first node: config and both layers from the registry, once each.
    let first = mesh.nodes[0].client.pull_image(&reference).await.unwrap();
    assert_eq!(first.digest, app.manifest.to_string());
    assert_eq!((first.registry_blobs, first.peer_blobs, first.held_blobs), (3, 0, 0), "{first:?}");
    assert!(first.registry_bytes >= big.len() as u64);
    assert_eq!(registry.blob_gets("app") - gets_after_push, 3, "one download per blob");

    // The second node: every blob from the first, none from the registry.
    let second = mesh.nodes[1].client.pull_image(&reference).await.unwrap();
    assert_eq!(second.digest, first.digest);
    assert_eq!((second.registry_blobs, second.peer_blobs), (0, 3), "{second:?}");
    assert_eq!(registry.blob_gets("app") - gets_after_push, 3, "the registry sent no blob twice");
    let listed = mesh.nodes[1].client.images().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].names, std::slice::from_ref(&reference));
    let shown = mesh.nodes[1].client.image(&reference).await.unwrap();
    assert_eq!(shown.layers.len(), 2);
    assert_eq!(shown.layers[0].digest, app.layers[0].to_string());
    // Pulling again holds everything already.
    let again = mesh.nodes[1].client.pull_image(&reference).await.unwrap();
    assert_eq!((again.registry_blobs, again.peer_blobs, again.held_blobs), (0, 0, 3));

    // A layer with `../escaped` is refused; the image gets no name.
    let error = mesh.nodes[0].client.pull_image(&format!("{}/evil:v1", registry.addr)).await.unwrap_err().to_string();
    assert!(error.contains("has a `..` component; refusing an entry that escapes the root"), "{error}");
    assert!(!mesh.nodes[0].client.images().await.unwrap().iter().any(|i| i.digest == evil.manifest.to_string()));

    // The registry's copy of a layer changed under it (same size, other bytes): refused.
    let file = registry.blob_file(bad.layers[0]);
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, noise(len, 11)).unwrap();
    let error = mesh.nodes[2].client.pull_image(&format!("{}/bad:v1", registry.addr)).await.unwrap_err().to_string();
    assert!(error.contains(&bad.layers[0].to_string()) && error.contains("refused"), "{error}");
    assert!(mesh.nodes[2].client.images().await.unwrap().is_empty());

    // An archive (the app's layout as a tar) imports on the third node under its digest.
    let archive = work.path().join("app.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", work.path().join("app")).unwrap();
    builder.finish().unwrap();
    let imported = mesh.nodes[2].client.import_image(&archive, Some("local/app:imported")).await.unwrap();
    assert_eq!(imported[0].digest, app.manifest.to_string());
    assert_eq!(imported[0].names, ["docker.io/local/app:imported"]);
    let removed = mesh.nodes[2].client.remove_image("local/app:imported").await.unwrap();
    assert_eq!(removed.names, ["docker.io/local/app:imported"]);
    assert!(mesh.nodes[2].client.images().await.unwrap().is_empty());
    let gone = mesh.nodes[2].client.image("local/app:imported").await.unwrap_err().to_string();
    assert!(gone.contains("no image named"), "{gone}");
}

/// The image commands as a user who is not root (the test drops to one when it runs as root):
/// `falak up --insecure-registry`, then `falak image pull | list | inspect | import | rm`; the
/// node unpacks the root filesystem as that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_user_pulls_imports_and_removes_images_with_the_cli() {
    use super::isolation::{Workspace, unprivileged_user};
    let registry = Registry::start().unwrap();
    let ws = Workspace::new(unprivileged_user());
    let layout = ws.cwd.join("app-layout");
    let app = build_layout(&layout, "v1", &[layer(&[("bin/hello", b"#!/bin/sh\necho hello\n")])]).unwrap();
    push(&layout, "v1", &registry, "app").unwrap();
    if let Some(user) = &ws.user {
        let out =
            Command::new("chown").args(["-R", &format!("{}:{}", user.uid, user.gid)]).arg(&layout).output().unwrap();
        assert!(out.status.success());
    }
    let mut mesh = ws.up(&["--nodes", "3", "--base-port", "0", "--insecure-registry", &registry.addr]);
    mesh.wait_for_output("Ctrl-C stops the mesh", Duration::from_secs(180)).await;
    let reference = format!("{}/app:v1", registry.addr);

    let pulled = ws.run(&["image", "pull", &reference], Duration::from_secs(60)).await;
    assert!(pulled.starts_with(&format!("pulled {reference} {}", app.manifest)), "{pulled}");
    assert!(pulled.contains("(2 blobs from the registry"), "{pulled}");
    let rootfs = ws.cwd.join(".falak/node-1/images/rootfs").join(app.manifest.hex());
    assert_eq!(std::fs::read_to_string(rootfs.join("bin/hello")).unwrap(), "#!/bin/sh\necho hello\n");

    let listed = ws.run(&["image", "list"], Duration::from_secs(30)).await;
    assert!(listed.contains(&reference) && listed.contains(&app.manifest.hex()[..12]), "{listed}");
    let shown = ws.run(&["image", "inspect", &app.manifest.hex()[..12]], Duration::from_secs(30)).await;
    assert!(shown.contains(&format!("digest:      {}", app.manifest)), "{shown}");

    // The layout directory imports as is (the CLI sends it as a tar) under a name of ours.
    let imported = ws.run(&["image", "import", "app-layout", "--name", "local/tool:1"], Duration::from_secs(60)).await;
    assert_eq!(imported.trim(), format!("imported docker.io/local/tool:1 {}", app.manifest));
    let removed = ws.run(&["image", "rm", &app.manifest.to_string()], Duration::from_secs(30)).await;
    assert!(removed.contains("docker.io/local/tool:1") && removed.contains(&reference), "{removed}");
    let empty = ws.run(&["image", "list"], Duration::from_secs(30)).await;
    assert!(empty.starts_with("no images on this node"), "{empty}");
    mesh.stop_within(Duration::from_secs(30)).await;
}

/// A registry that asks for a password (basic auth): a node configured with `registry_auth`
/// pulls; a node without credentials is refused with the registry's answer, and names nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_asks_for_a_password_gets_it_only_from_nodes_configured_with_it() {
    let registry = Registry::start_with_auth("falak", "s3cret-pw").unwrap();
    let work = tempfile::tempdir().unwrap();
    let app = build_layout(&work.path().join("app"), "v1", &[layer(&[("bin/hello", b"hi\n")])]).unwrap();
    push(&work.path().join("app"), "v1", &registry, "app").unwrap();
    let reference = format!("{}/app:v1", registry.addr);

    let auth = falak_image::RegistryAuth { username: "falak".into(), password: "s3cret-pw".into() };
    let options = MeshOptions {
        insecure_registries: vec![registry.addr.clone()],
        registry_auth: [(registry.addr.clone(), auth)].into(),
        ..MeshOptions::new(1)
    };
    let mut with = Mesh::start(binary(), &work.path().join("with"), &options).unwrap();
    with.wait_ready(Duration::from_secs(60)).await.unwrap();
    let pulled = with.nodes[0].client.pull_image(&reference).await.unwrap();
    assert_eq!((pulled.digest, pulled.registry_blobs), (app.manifest.to_string(), 2));
    let config = std::fs::read_to_string(&with.nodes[0].config).unwrap();
    assert!(config.contains("s3cret-pw"), "the password is in node.yaml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&with.nodes[0].config).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "which only the node's user reads");
    assert!(!with.nodes[0].log_tail(10_000).contains("s3cret-pw"), "and never in its log");

    let options = MeshOptions { insecure_registries: vec![registry.addr.clone()], ..MeshOptions::new(1) };
    let mut without = Mesh::start(binary(), &work.path().join("without"), &options).unwrap();
    without.wait_ready(Duration::from_secs(60)).await.unwrap();
    let error = without.nodes[0].client.pull_image(&reference).await.unwrap_err().to_string();
    assert!(error.starts_with(&format!("pulling {reference}:")), "{error}");
    let hint = format!("give this node a `registry_auth` entry for {} in its node.yaml", registry.addr);
    assert!(error.contains("Not authorized") && error.ends_with(&hint), "{error}");
    assert!(without.nodes[0].client.images().await.unwrap().is_empty());
}
