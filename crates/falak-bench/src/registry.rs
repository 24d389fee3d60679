//! A local OCI registry for tests and benchmarks: Debian's `docker-registry` on a loopback
//! port (its access log counts what it served), images written as OCI layouts byte by byte, and
//! `skopeo` to push them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use falak_artifact::Sha256Digest;
use serde_json::json;

/// A `docker-registry` serving plain HTTP on a loopback port, its log in a file.
pub struct Registry {
    pub addr: String,
    /// The user and password it asks for (htpasswd, basic auth), if any.
    pub creds: Option<(String, String)>,
    pub data: PathBuf,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Result<Registry> {
        Registry::start_with(None)
    }

    /// A registry that asks for `user` and `password` (basic auth through an htpasswd file,
    /// its bcrypt hash made with Python's `crypt`).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Registry> {
        Registry::start_with(Some((user.to_owned(), password.to_owned())))
    }

    fn start_with(creds: Option<(String, String)>) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: info, formatter: text }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: {addr} }}\n{}",
                data.display(),
                match &creds {
                    None => String::new(),
                    Some((user, password)) => {
                        let htpasswd = dir.path().join("htpasswd");
                        let script =
                            "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))";
                        let out = Command::new("python3").args(["-W", "ignore", "-c", script, password]).output()?;
                        if !out.status.success() {
                            bail!("hashing the registry password: {}", String::from_utf8_lossy(&out.stderr));
                        }
                        std::fs::write(&htpasswd, format!("{user}:{}", String::from_utf8_lossy(&out.stdout).trim()))?;
                        format!("auth: {{ htpasswd: {{ realm: falak-test, path: {} }} }}\n", htpasswd.display())
                    }
                }
            ),
        )?;
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting docker-registry (Debian package docker-registry; .ci/run installs it)")?;
        let registry = Registry { addr, creds, data, log, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            if Instant::now() > deadline {
                bail!("the registry did not listen within 20 s: {}", registry.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Blob downloads the registry served (its access log), of repository `repo`.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        self.log_text().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Bytes of blobs of repository `repo` the registry served (its access log's sizes).
    pub fn blob_bytes(&self, repo: &str) -> u64 {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| l.split("HTTP/1.1\" ").nth(1)?.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
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

/// A tar header of `kind`, owned by root, with `mode` and `size` and no time.
fn root_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(kind);
    header
}

/// A layer: an uncompressed tar of `files` (names written raw, so `../x` can be made).
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = root_header(tar::EntryType::Regular, 0o755, bytes.len() as u64);
        if let Some(gnu) = header.as_gnu_mut() {
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, *bytes).expect("appending to a Vec cannot fail");
    }
    builder.into_inner().expect("a Vec cannot fail")
}

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The busybox applets [`busybox_layer`] links.
pub const BUSYBOX_APPLETS: [&str; 16] = [
    "sh", "echo", "cat", "id", "pwd", "sleep", "ls", "dd", "head", "touch", "mkdir", "true", "hostname", "wc", "env",
    "printf",
];

/// A layer holding `/bin/busybox` (the host's static one) and a link to it for each of
/// [`BUSYBOX_APPLETS`]: a root filesystem a container can run a shell in.
pub fn busybox_layer() -> Result<Vec<u8>> {
    let binary = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (Debian package busybox-static; .ci/run installs it)"))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = root_header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    builder.append_data(&mut header, "bin/busybox", binary.as_slice())?;
    for applet in BUSYBOX_APPLETS {
        let mut header = root_header(tar::EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    Ok(builder.into_inner()?)
}

/// The test server of container functions (`fixtures/serve.rs`): `serve socket` answers on
/// `$FALAK_SOCKET`, `serve port` on `127.0.0.1:$PORT`.
const SERVE_SOURCE: &str = include_str!("../fixtures/serve.rs");

/// A layer holding `/bin/serve` ([`serve_binary`]).
pub fn serve_layer() -> Result<Vec<u8>> {
    Ok(layer(&[("bin/serve", &serve_binary()?)]))
}

/// [`SERVE_SOURCE`] built by `rustc` (`$RUSTC`, else the one on `PATH`) as a static binary, so
/// it runs in an image with no C library.
pub fn serve_binary() -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let (source, binary) = (dir.path().join("serve.rs"), dir.path().join("serve"));
    std::fs::write(&source, SERVE_SOURCE)?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--edition", "2024", "-C", "target-feature=+crt-static", "-C", "opt-level=1", "-C", "strip=symbols"])
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} to build the test server", rustc.to_string_lossy()))?;
    if !out.status.success() {
        bail!("building the test server failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(std::fs::read(&binary)?)
}

/// An image written as an OCI layout in `dir` with tag `tag`.
pub struct Built {
    pub manifest: Sha256Digest,
    pub layers: Vec<Sha256Digest>,
}

pub fn build_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Result<Built> {
    let (os, arch) = falak_image::host_platform();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": os,
        "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| Sha256Digest::of(l).to_string()).collect::<Vec<_>>() }
    }))?;
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
    }))?;
    let digest = Sha256Digest::of(&manifest);
    blobs.insert(digest, manifest.clone());
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    for (d, bytes) in &blobs {
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": manifest.len(),
        "annotations": { "org.opencontainers.image.ref.name": tag } }] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(Built { manifest: digest, layers: digests })
}

/// `skopeo copy oci:DIR:TAG docker://REGISTRY/REPO:TAG` over plain HTTP.
pub fn push(layout: &Path, tag: &str, registry: &Registry, repo: &str) -> Result<()> {
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"]);
    if let Some((user, password)) = &registry.creds {
        command.arg(format!("--dest-creds={user}:{password}"));
    }
    let out = command
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", registry.addr))
        .stdin(Stdio::null())
        .output()
        .context("running skopeo (Debian package skopeo; .ci/run installs it)")?;
    if !out.status.success() {
        bail!("skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Deterministic bytes that do not compress (so sizes mean something).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    // Distinct seeds give distinct streams (xorshift needs a state other than 0).
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
