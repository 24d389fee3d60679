//! The node's artifacts: one content-addressed store (`falak_artifact`), served to peers over
//! `Protocol::Artifact` and filled from them, and the unpacked code bundles that functions and
//! process capsules run from. Shared by the function host, the task runner and the API.
//!
//! **Invariant:** an artifact reaches a workload only from this node's store, where it lies
//! under the hash of its bytes (`falak_artifact` verifies every fetched blob before storing).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use falak_api::ApiError;
use falak_api::function::ArtifactStored;
use falak_artifact::{ArtifactStore, BlobId, Fetcher};
use falak_core::placement::Health;
use falak_core::{ArtifactId, NodeId};
use falak_ledger::Ledger;
use falak_membership::MembershipSnapshot;
use falak_transport::Transport;
use tokio::sync::watch;

/// An artifact nothing in the ledger uses is kept this long after its last use.
const GC_MIN_UNUSED: Duration = Duration::from_secs(3600);
/// Unused artifacts are also removed, least recently used first, while the store is larger.
const GC_MAX_BYTES: u64 = 10 << 30;

/// Why the node's artifact store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the artifact store in {dir}: {reason}; check the node's data directory is writable")]
pub struct ArtifactsError {
    pub dir: PathBuf,
    pub reason: String,
}

/// What the node holds, where it unpacks bundles, and whom it asks for what it lacks.
pub struct NodeArtifacts {
    id: NodeId,
    store: Arc<ArtifactStore>,
    /// The image index over the same store (OCI blobs by SHA-256).
    images: Arc<falak_image::Images>,
    fetcher: Fetcher,
    /// One directory per unpacked bundle, named by its id.
    bundles: PathBuf,
    ledger: Ledger,
    membership: watch::Receiver<Arc<MembershipSnapshot>>,
}

impl NodeArtifacts {
    /// Open the store in `<data_dir>/artifacts` (removing what a crash left half-written).
    pub fn open(
        data_dir: &std::path::Path,
        id: NodeId,
        transport: Arc<dyn Transport>,
        ledger: Ledger,
        membership: watch::Receiver<Arc<MembershipSnapshot>>,
    ) -> Result<Arc<NodeArtifacts>, ArtifactsError> {
        let dir = data_dir.join("artifacts");
        let store = Arc::new(
            ArtifactStore::open(&dir).map_err(|e| ArtifactsError { dir: dir.clone(), reason: e.to_string() })?,
        );
        let fetcher = Fetcher::new(transport, store.clone());
        let bundles = data_dir.join("bundles");
        let images_dir = data_dir.join("images");
        let images = falak_image::Images::open(&images_dir, store.clone())
            .map_err(|e| ArtifactsError { dir: images_dir, reason: e.to_string() })?;
        Ok(Arc::new(NodeArtifacts { id, store, images: Arc::new(images), fetcher, bundles, ledger, membership }))
    }

    /// Where bundles are unpacked, one directory per id.
    pub fn bundles_root(&self) -> &std::path::Path {
        &self.bundles
    }

    pub fn images(&self) -> &Arc<falak_image::Images> {
        &self.images
    }

    pub fn store(&self) -> &Arc<ArtifactStore> {
        &self.store
    }

    /// The artifact protocol handler: serve what this node holds.
    pub fn handler(&self) -> Arc<dyn falak_transport::Handler> {
        Arc::new(falak_artifact::serve(self.store.clone()))
    }

    /// Healthy peers the ledger lists (a revoked node may still gossip), in id order: whom
    /// to ask for an artifact this node lacks.
    pub fn peers(&self) -> Vec<NodeId> {
        let snapshot = self.membership.borrow().clone();
        let state = self.ledger.state();
        let mut peers: Vec<NodeId> = snapshot
            .peers
            .iter()
            .filter(|p| p.id != self.id && crate::membership::health(p.health) == Health::Healthy)
            .filter(|p| state.node(&p.id).is_some())
            .map(|p| p.id)
            .collect();
        peers.sort();
        peers
    }

    /// Make sure this node holds blob `id`, fetching it from a peer (verified) when it lacks it.
    pub async fn hold(&self, id: impl Into<BlobId>) -> Result<(), String> {
        let id = id.into();
        if self.store.contains(id) {
            return Ok(());
        }
        let peers = self.peers();
        self.fetcher.fetch(id, &peers).await.map(drop).map_err(|e| e.to_string())
    }

    /// The unpacked bundle `artifact`, fetched from a peer first if this node lacks it. The
    /// directory and everything in it belong to the node; workloads get read access or a copy.
    pub async fn bundle_dir(&self, artifact: ArtifactId) -> Result<PathBuf, String> {
        let dest = self.bundles.join(artifact.to_string());
        if dest.is_dir() {
            return Ok(dest);
        }
        self.hold(artifact).await?;
        let store = self.store.clone();
        let target = dest.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let bytes = store.read(artifact).map_err(|e| e.to_string())?;
            falak_artifact::bundle::unpack(&bytes, &target).map_err(|e| e.to_string())?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(dest)
    }

    /// `POST /api/v1/artifacts`: check that `bytes` is a usable bundle and store it.
    pub async fn store_bundle(&self, bytes: bytes::Bytes) -> Result<ArtifactStored, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            falak_artifact::bundle::validate(&bytes)
                .map_err(|e| ApiError::invalid(format!("the bundle is not usable: {e}")))?;
            let id = ArtifactId(*blake3::hash(&bytes).as_bytes());
            let existed = store.contains(id);
            store.put(&bytes).map_err(|e| ApiError::internal(format!("cannot store the bundle: {e}")))?;
            Ok(ArtifactStored { id, size: bytes.len() as u64, existed })
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// Every blob something references: each function's bundle and the code of every stored
    /// capsule version (from the ledger), and every blob of every image this node names.
    /// Blocking (it reads the images' manifests).
    pub fn referenced(&self) -> BTreeSet<BlobId> {
        let mut keep = self.in_ledger();
        keep.extend(self.images.referenced());
        keep
    }

    /// What the ledger's versions reference: every kept version of each function (so a
    /// rollback finds its bundle), every capsule version's code, and the image blobs of every
    /// container capsule and function version this node holds.
    fn in_ledger(&self) -> BTreeSet<BlobId> {
        let state = self.ledger.state();
        let functions = state
            .functions()
            .flat_map(|f| std::iter::once(&f.spec).chain(f.history.iter().map(|h| &h.spec)))
            .filter_map(|spec| spec.artifact);
        let capsules = state.capsules().flat_map(|(_, versions)| versions.iter().flat_map(|v| v.spec.artifacts()));
        let mut keep: BTreeSet<BlobId> = functions.chain(capsules).map(BlobId::from).collect();
        let function_images = state
            .functions()
            .flat_map(|f| std::iter::once(&f.spec).chain(f.history.iter().map(|h| &h.spec)))
            .filter_map(|spec| spec.container.as_deref());
        let images = state
            .capsules()
            .flat_map(|(_, versions)| versions.iter().filter_map(|v| v.spec.container.as_deref()))
            .chain(function_images)
            .filter_map(|c| c.digest().parse::<falak_artifact::Sha256Digest>().ok());
        for digest in images {
            keep.extend(self.images.blobs_of(digest));
        }
        keep
    }

    /// Remove blobs (and unpacked bundles) nothing references any more, once
    /// unused for [`GC_MIN_UNUSED`], or sooner while the store is over [`GC_MAX_BYTES`].
    pub fn collect_garbage(&self) {
        let mut keep = self.in_ledger();
        let (store, images, bundles) = (self.store.clone(), self.images.clone(), self.bundles.clone());
        tokio::task::spawn_blocking(move || {
            keep.extend(images.referenced());
            let roots = images.collect_roots();
            if roots > 0 {
                tracing::info!(roots, "removed the unpacked roots of images no name points at");
            }
            match store.gc(&keep, crate::clock::system_now(), GC_MIN_UNUSED, GC_MAX_BYTES) {
                Ok(report) if report.freed_bytes > 0 => tracing::info!(?report, "artifacts collected"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "artifact collection failed"),
            }
            let Ok(entries) = std::fs::read_dir(&bundles) else { return };
            for entry in entries.flatten() {
                let id = entry.file_name().to_str().and_then(|n| n.parse::<ArtifactId>().ok());
                if id.is_some_and(|id| !keep.contains(&BlobId::from(id)) && !store.contains(id)) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        });
    }
}
