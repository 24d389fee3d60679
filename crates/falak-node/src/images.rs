//! The node's images: pulls that ask peers for every blob before the registry (so a mesh
//! asks a registry for an image about once while a peer holds it), imports of archives
//! streamed through the API, and the API's image answers. The store and the index are
//! `crate::artifacts::NodeArtifacts`'s; `falak_image` does the OCI work.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use falak_api::ApiError;
use falak_api::image::{
    ImageAction, ImageDetails, ImageImported, ImageInfo, ImageLayer, ImagePulled, ImageRemoved, MAX_IMPORT_BYTES,
};
use falak_artifact::Sha256Digest;
use falak_image::{ImageError, Images, Registry};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::artifacts::NodeArtifacts;

/// Pulls and imports on this node.
pub struct NodeImages {
    artifacts: Arc<NodeArtifacts>,
    registry: Registry,
    /// Archives being received, removed once imported (or refused).
    incoming: PathBuf,
    /// One container image made ready at a time: the attempts of a job that wait for the same
    /// image pull and unpack it once.
    readying: tokio::sync::Mutex<()>,
}

/// What a container of an image needs from the node: the image's root filesystem and its
/// config's defaults.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    pub rootfs: PathBuf,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// What a container of an image runs, resolved from the image's config and what the capsule
/// or function says over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRun {
    /// The process and its arguments.
    pub args: Vec<String>,
    /// The image's environment (the workload's goes over it).
    pub env: std::collections::BTreeMap<String, String>,
    /// The image's root, the working directory and the user inside; no mounts.
    pub task: falak_exec::ContainerTask,
}

impl ContainerImage {
    /// Resolve what runs under Kubernetes' rules: `command` replaces the image's entrypoint
    /// (and drops its cmd), `container.args` its cmd; the working directory and user are the
    /// container's, else the image's (a user name is looked up in the image's own files).
    /// Blocking (it reads `/etc/passwd` and `/etc/group` of the image).
    pub fn run(
        self,
        command: Vec<String>,
        container: &falak_core::capsule::ContainerSpec,
    ) -> Result<ContainerRun, String> {
        let (entrypoint, cmd) = match (command.is_empty(), container.args.is_empty()) {
            (true, true) => (self.entrypoint, self.cmd),
            (true, false) => (self.entrypoint, container.args.clone()),
            (false, _) => (command, container.args.clone()),
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() {
            return Err(format!(
                "the image {} has no entrypoint or cmd, and no `command` replaces them; give one",
                container.image
            ));
        }
        let env =
            self.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let cwd =
            container.workdir.clone().or(self.working_dir.filter(|w| !w.is_empty())).unwrap_or_else(|| "/".into());
        let user = container.user.as_deref().or(self.user.as_deref());
        let (uid, gid) = falak_image::resolve_user(&self.rootfs, user)?;
        let task = falak_exec::ContainerTask {
            rootfs: self.rootfs,
            cwd,
            user: falak_exec::RunAs { uid, gid },
            mounts: Vec::new(),
        };
        Ok(ContainerRun { args, env, task })
    }
}

impl NodeImages {
    pub fn new(artifacts: Arc<NodeArtifacts>, config: &crate::config::NodeConfig) -> Arc<NodeImages> {
        let registry = Registry::new(config.insecure_registries.clone(), config.registry_auth.clone());
        let incoming = config.data_dir.join("images").join("incoming");
        // What a crash left half-received.
        let _ = std::fs::remove_dir_all(&incoming);
        Arc::new(NodeImages { artifacts, registry, incoming, readying: tokio::sync::Mutex::new(()) })
    }

    fn images(&self) -> &Arc<Images> {
        self.artifacts.images()
    }

    /// Answer one image action (never blocks the caller).
    pub fn handle(self: &Arc<Self>, action: ImageAction) {
        let this = self.clone();
        tokio::spawn(async move { this.answer(action).await });
    }

    async fn answer(self: Arc<Self>, action: ImageAction) {
        match action {
            ImageAction::Pull { reference, reply } => {
                let _ = reply.send(self.pull(&reference).await.map_err(api_error));
            }
            ImageAction::Import { body, name, reply } => {
                let _ = reply.send(self.import(body, name).await);
            }
            ImageAction::List { reply } => {
                let images = self.images().clone();
                let listed = blocking(move || Ok(images.list())).await;
                let _ = reply.send(listed.map(|list| list.into_iter().map(info).collect()));
            }
            ImageAction::Inspect { image, reply } => {
                let images = self.images().clone();
                let details = blocking(move || {
                    let digest = images.resolve(&image).ok_or_else(|| ImageError::NotFound(image.clone()))?;
                    images.inspect(digest)
                })
                .await;
                let _ = reply.send(details.map(|d| {
                    ImageDetails {
                        image: info(d.summary),
                        config_digest: d.config_digest,
                        layers: d
                            .layers
                            .into_iter()
                            .map(|l| ImageLayer { digest: l.digest, size: l.size, media_type: l.media_type })
                            .collect(),
                        entrypoint: d.entrypoint,
                        cmd: d.cmd,
                        env: d.env,
                        working_dir: d.working_dir,
                        user: d.user,
                    }
                }));
            }
            ImageAction::Remove { image, reply } => {
                let images = self.images().clone();
                let removed = blocking(move || images.remove(&image)).await;
                let _ = reply.send(removed.map(|(digest, names)| ImageRemoved { digest: digest.to_string(), names }));
            }
        }
    }

    /// Hold `reference` here: its manifest from the registry (a tag is the registry's to
    /// resolve; a digest a peer may already hold), then every blob this node lacks from a peer
    /// that holds it, else from the registry. Each blob is checked against its digest.
    pub async fn pull(&self, reference: &str) -> Result<ImagePulled, ImageError> {
        let parsed = falak_image::Reference::try_from(reference)
            .map_err(|e| ImageError::BadReference(reference.to_owned(), e.to_string()))?;
        let pinned: Option<Sha256Digest> = parsed.digest().and_then(|d| d.parse().ok());
        let images = self.images().clone();
        let digest = match pinned {
            Some(digest) if self.artifacts.hold(digest).await.is_ok() && self.images().manifest(digest).is_ok() => {
                digest
            }
            _ => self.registry.manifest(&images, reference).await?.1,
        };
        let manifest = images.manifest(digest)?;
        let (mut pulled, mut from_registry_bytes) = ((0, 0, 0), 0);
        for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let blob = falak_image::store::descriptor_digest(descriptor)?;
            if images.blobs().contains(blob) {
                pulled.2 += 1;
            } else if self.artifacts.hold(blob).await.is_ok() {
                pulled.1 += 1;
            } else {
                from_registry_bytes += self.registry.blob(&images, &parsed, descriptor).await?;
                pulled.0 += 1;
            }
        }
        let name = parsed.whole();
        let tag = name.clone();
        // Unpacked now, so a layer that escapes its root is refused before the image is
        // named, and a container of it starts without waiting for the unpack.
        tokio::task::spawn_blocking(move || images.rootfs(digest).and_then(|_| images.tag(&tag, digest)))
            .await
            .map_err(|e| ImageError::Store(e.to_string()))??;
        tracing::info!(image = %name, %digest, registry_blobs = pulled.0, peer_blobs = pulled.1, "image pulled");
        Ok(ImagePulled {
            name,
            digest: digest.to_string(),
            registry_blobs: pulled.0,
            registry_bytes: from_registry_bytes,
            peer_blobs: pulled.1,
            held_blobs: pulled.2,
        })
    }

    /// Whether the pinned image `reference` is ready to run here: its manifest stored and its
    /// root filesystem unpacked. Two `stat`s, no read: the prefetch asks every round.
    pub fn is_ready(&self, reference: &str) -> bool {
        pinned_digest(reference).is_some_and(|digest| self.ready(digest))
    }

    fn ready(&self, digest: Sha256Digest) -> bool {
        self.images().rootfs_dir().join(digest.hex()).is_dir() && self.images().blobs().contains(digest)
    }

    /// The pinned image `reference` (`name@sha256:…`) ready to run: pulled if this node lacks
    /// it (from peers first), its root filesystem unpacked.
    pub async fn for_container(&self, reference: &str) -> Result<ContainerImage, ImageError> {
        let digest = pinned_digest(reference)
            .ok_or_else(|| ImageError::BadReference(reference.to_owned(), "it names no sha256 digest".into()))?;
        if !self.ready(digest) {
            let _one_at_a_time = self.readying.lock().await;
            if !self.ready(digest) {
                self.pull(reference).await?;
            }
        }
        let images = self.images().clone();
        tokio::task::spawn_blocking(move || {
            let rootfs = images.rootfs(digest)?;
            let details = images.inspect(digest)?;
            Ok(ContainerImage {
                rootfs,
                entrypoint: details.entrypoint,
                cmd: details.cmd,
                env: details.env,
                working_dir: details.working_dir,
                user: details.user,
            })
        })
        .await
        .map_err(|e| ImageError::Store(e.to_string()))?
    }

    /// Receive an archive into `incoming/`, import it, remove it.
    async fn import(&self, body: axum::body::Body, name: Option<String>) -> Result<Vec<ImageImported>, ApiError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        tokio::fs::create_dir_all(&self.incoming)
            .await
            .map_err(|e| ApiError::internal(format!("cannot make {}: {e}", self.incoming.display())))?;
        let path = self.incoming.join(format!("{}-{}.tar", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let received = receive(body, &path).await;
        let result = match received {
            Ok(0) => Err(ApiError::invalid("request body is empty; send the image archive")),
            Ok(_) => {
                let (images, archive) = (self.images().clone(), path.clone());
                blocking(move || falak_image::import(&images, &archive, name.as_deref())).await.map(|imported| {
                    imported
                        .into_iter()
                        .map(|i| ImageImported { digest: i.digest.to_string(), names: i.names })
                        .collect()
                })
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
}

/// The digest of a pinned reference (`name@sha256:…`).
fn pinned_digest(reference: &str) -> Option<Sha256Digest> {
    reference.rsplit_once('@').and_then(|(_, d)| d.parse().ok())
}

/// Write the request body to `path`, at most [`MAX_IMPORT_BYTES`]; the bytes written.
async fn receive(body: axum::body::Body, path: &std::path::Path) -> Result<u64, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("cannot write {}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("request body: {e}")))?;
        written += chunk.len() as u64;
        if written > MAX_IMPORT_BYTES {
            return Err(ApiError::too_large(format!("an image archive is at most {MAX_IMPORT_BYTES} bytes")));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(written)
}

fn info(summary: falak_image::ImageSummary) -> ImageInfo {
    ImageInfo {
        digest: summary.digest.to_string(),
        names: summary.names,
        size: summary.size,
        layers: summary.layers,
        platform: summary.platform,
    }
}

/// How an image error reaches the API: not found is 404, bad input 400, the rest 502 (the
/// registry) or 500 (this node).
pub fn api_error(error: ImageError) -> ApiError {
    let message = error.to_string();
    match error {
        ImageError::NotFound(_) => ApiError::not_found(message),
        ImageError::BadReference(..)
        | ImageError::BadArchive { .. }
        | ImageError::BadManifest { .. }
        | ImageError::DigestMismatch { .. }
        | ImageError::Unpack(_) => ApiError::invalid(message),
        ImageError::Registry { .. } | ImageError::MissingBlob { .. } => {
            ApiError::new(falak_api::ErrorCode::BadGateway, message)
        }
        ImageError::Io { .. } | ImageError::Store(_) => ApiError::internal(message),
    }
}

/// Run blocking image work off the async threads, its error as the API's.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(api_error),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
