//! Issue 11's images against a real registry: Debian's `docker-registry` on a loopback port,
//! images the test builds (an OCI layout written here, pushed with `skopeo`), three real nodes.
//! The first pull reaches the registry once per blob; a second node gets every blob from the
//! first (the registry's access log is counted); a blob whose bytes the registry's disk no
//! longer matches is refused; a layer that escapes the root is refused; an archive imports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use falak_artifact::Sha256Digest;
use falak_bench::mesh::{Mesh, MeshOptions};
use serde_json::json;

/// A `docker-registry` serving plain HTTP on a loopback port, its log in a file.
pub struct Registry {
    pub addr: String,
    pub data: PathBuf,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: info, formatter: text }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: {addr} }}\n",
                data.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry (Debian package docker-registry; .ci/run installs it) starts");
        let registry = Registry { addr, data, log, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen: {}", registry.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Blob downloads the registry served (its access log), of repository `repo`.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        self.log_text().lines().filter(|l| l.contains(&needle)).count()
    }

    /// The registry's file of blob `digest` (the filesystem driver's layout).
    pub fn blob_file(&self, digest: Sha256Digest) -> PathBuf {
        let hex = digest.hex();
        self.data.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layer: an uncompressed tar of `files` (names written raw, so `../x` can be made).
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image written as an OCI layout in `dir` with tag `tag`.
pub struct Built {
    pub manifest: Sha256Digest,
    pub layers: Vec<Sha256Digest>,
}

pub fn build_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Built {
    let (os, arch) = falak_image::host_platform();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": os,
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| Sha256Digest::of(l).to_string()).collect::<Vec<_>>() }
    }))
    .unwrap();
    let mut blobs = BTreeMap::from([(Sha256Digest::of(&config), config.clone())]);
    let mut descriptors = Vec::new();
    let mut digests = Vec::new();
    for l in layers {
        let d = Sha256Digest::of(l);
        digests.push(d);
        blobs.insert(d, l.clone());
        descriptors.push(
            json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": l.len() }),
        );
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": Sha256Digest::of(&config).to_string(), "size": config.len() },
        "layers": descriptors,
    }))
    .unwrap();
    let digest = Sha256Digest::of(&manifest);
    blobs.insert(digest, manifest.clone());
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    for (d, bytes) in &blobs {
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": tag } }] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Built { manifest: digest, layers: digests }
}

/// `skopeo copy oci:DIR:TAG docker://REGISTRY/REPO:TAG` over plain HTTP.
pub fn push(layout: &Path, tag: &str, registry: &Registry, repo: &str) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", registry.addr))
        .stdin(Stdio::null())
        .output()
        .expect("skopeo (Debian package skopeo; .ci/run installs it) runs");
    assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Deterministic bytes that do not compress (so sizes mean something).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_falak"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_asks_the_registry_once_and_refuses_wrong_bytes_and_escaping_layers() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let big = noise(4 << 20, 7);
    let app = build_layout(
        &work.path().join("app"),
        "v1",
        &[layer(&[("data/big.bin", &big)]), layer(&[("bin/hello", b"#!/bin/sh\necho hello\n")])],
    );
    push(&work.path().join("app"), "v1", &registry, "app");
    let evil = build_layout(&work.path().join("evil"), "v1", &[layer(&[("../escaped", b"x")])]);
    push(&work.path().join("evil"), "v1", &registry, "evil");
    let bad = build_layout(&work.path().join("bad"), "v1", &[layer(&[("data/x", &noise(1 << 20, 9))])]);
    push(&work.path().join("bad"), "v1", &registry, "bad");
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
    let registry = Registry::start();
    let ws = Workspace::new(unprivileged_user());
    let layout = ws.cwd.join("app-layout");
    let app = build_layout(&layout, "v1", &[layer(&[("bin/hello", b"#!/bin/sh\necho hello\n")])]);
    push(&layout, "v1", &registry, "app");
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
