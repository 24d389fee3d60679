//! The node's images: OCI blobs in the node's artifact store (named by SHA-256), and a small
//! index of names (`refs.json`: `registry/repository:tag` → manifest digest) beside them.
//!
//! **Invariant:** a name points only at a manifest whose blob, config and layers are all in the
//! store (each verified against its digest when it was written); [`Images::tag`] checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use falak_artifact::{ArtifactStore, BlobId, Sha256Digest};
use oci_client::config::ConfigFile;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};

use crate::ImageError;

/// The largest manifest or config the node reads (they are JSON; real ones are a few KiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// What `refs.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Refs {
    /// Full reference name (`127.0.0.1:5000/app:v1`, `docker.io/library/alpine:3.20`) → manifest.
    names: BTreeMap<String, Sha256Digest>,
}

/// One image the node holds, as `falak image list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    pub digest: Sha256Digest,
    /// The names that point at it (none: pulled by digest only).
    pub names: Vec<String>,
    /// Config plus layers, compressed as stored.
    pub size: u64,
    pub layers: usize,
    /// `linux/amd64`, from the config.
    pub platform: String,
}

/// What `falak image inspect` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageDetails {
    pub summary: ImageSummary,
    pub config_digest: String,
    pub layers: Vec<LayerInfo>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// The node's image index over its blob store.
pub struct Images {
    blobs: Arc<ArtifactStore>,
    dir: PathBuf,
    refs: Mutex<Refs>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("dir", &self.dir).finish()
    }
}

/// The digest a descriptor names, refusing anything but `sha256:<hex>`.
pub fn descriptor_digest(descriptor: &OciDescriptor) -> Result<Sha256Digest, ImageError> {
    descriptor.digest.parse().map_err(|e: falak_artifact::ParseDigestError| ImageError::BadManifest {
        what: format!("a descriptor of media type {}", descriptor.media_type),
        reason: e.to_string(),
    })
}

/// A descriptor's size, refusing a negative one.
pub fn descriptor_size(descriptor: &OciDescriptor) -> Result<u64, ImageError> {
    u64::try_from(descriptor.size).map_err(|_| ImageError::BadManifest {
        what: format!("blob {}", descriptor.digest),
        reason: format!("its size {} is negative", descriptor.size),
    })
}

impl Images {
    /// Open the index in `dir` (creating it) over `blobs`. Blocking.
    pub fn open(dir: impl Into<PathBuf>, blobs: Arc<ArtifactStore>) -> Result<Images, ImageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| ImageError::Io { path: dir.clone(), source })?;
        let path = dir.join("refs.json");
        let refs = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Refs::default(),
            Err(source) => return Err(ImageError::Io { path, source }),
        };
        Ok(Images { blobs, dir, refs: Mutex::new(refs) })
    }

    pub fn blobs(&self) -> &Arc<ArtifactStore> {
        &self.blobs
    }

    /// Where root filesystems are unpacked, one directory per manifest digest.
    pub fn rootfs_dir(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Read and parse a stored manifest (an image manifest, OCI or Docker schema 2).
    pub fn manifest(&self, digest: Sha256Digest) -> Result<OciImageManifest, ImageError> {
        let bytes = self.small_blob(digest, "manifest")?;
        parse_manifest(&bytes, digest)
    }

    /// Read and parse an image's config.
    pub fn config(&self, manifest: &OciImageManifest) -> Result<ConfigFile, ImageError> {
        let digest = descriptor_digest(&manifest.config)?;
        let bytes = self.small_blob(digest, "config")?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadManifest { what: format!("config {digest}"), reason: e.to_string() })
    }

    fn small_blob(&self, digest: Sha256Digest, what: &str) -> Result<bytes::Bytes, ImageError> {
        let size = self.blobs.size(digest).map_err(|_| ImageError::MissingBlob { digest, what: what.to_owned() })?;
        if size > MAX_MANIFEST_BYTES {
            return Err(ImageError::BadManifest {
                what: format!("{what} {digest}"),
                reason: format!("{size} bytes is over the limit of {MAX_MANIFEST_BYTES}"),
            });
        }
        self.blobs.read(digest).map_err(|e| ImageError::Store(e.to_string()))
    }

    /// The config and layers of `manifest` this node does not hold yet.
    pub fn missing(&self, manifest: &OciImageManifest) -> Result<Vec<OciDescriptor>, ImageError> {
        let mut missing = Vec::new();
        for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !self.blobs.contains(descriptor_digest(descriptor)?) {
                missing.push(descriptor.clone());
            }
        }
        Ok(missing)
    }

    /// Point `name` at `digest`, which must be complete here. Blocking.
    pub fn tag(&self, name: &str, digest: Sha256Digest) -> Result<(), ImageError> {
        let manifest = self.manifest(digest)?;
        if let Some(first) = self.missing(&manifest)?.first() {
            return Err(ImageError::MissingBlob {
                digest: descriptor_digest(first)?,
                what: format!("a blob of image {digest}"),
            });
        }
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        refs.names.insert(name.to_owned(), digest);
        self.save(&refs)
    }

    /// The manifest digest `what` names: a full reference name, `sha256:<hex>`, or a unique
    /// prefix of at least 12 hex characters of a held image's digest.
    pub fn resolve(&self, what: &str) -> Option<Sha256Digest> {
        if let Ok(digest) = what.parse::<Sha256Digest>() {
            return Some(digest);
        }
        let refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(digest) = refs.names.get(what).or_else(|| refs.names.get(&crate::normalize(what).ok()?)) {
            return Some(*digest);
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let held: BTreeSet<Sha256Digest> = refs.names.values().copied().collect();
            let mut matching = held.into_iter().filter(|d| d.hex().starts_with(hex));
            if let (Some(one), None) = (matching.next(), matching.next()) {
                return Some(one);
            }
        }
        None
    }

    /// Every named image, with its names.
    pub fn list(&self) -> Vec<ImageSummary> {
        let names: Vec<(String, Sha256Digest)> = {
            let refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
            refs.names.iter().map(|(n, d)| (n.clone(), *d)).collect()
        };
        let mut by_digest: BTreeMap<Sha256Digest, Vec<String>> = BTreeMap::new();
        for (name, digest) in names {
            by_digest.entry(digest).or_default().push(name);
        }
        by_digest.into_iter().filter_map(|(digest, names)| self.summary(digest, names).ok()).collect()
    }

    fn summary(&self, digest: Sha256Digest, names: Vec<String>) -> Result<ImageSummary, ImageError> {
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest)?;
        let mut size = descriptor_size(&manifest.config)?;
        for layer in &manifest.layers {
            size += descriptor_size(layer)?;
        }
        Ok(ImageSummary {
            digest,
            names,
            size,
            layers: manifest.layers.len(),
            platform: format!("{}/{}", config.os, config.architecture),
        })
    }

    /// Everything `falak image inspect` shows of `digest`.
    pub fn inspect(&self, digest: Sha256Digest) -> Result<ImageDetails, ImageError> {
        let names = {
            let refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
            refs.names.iter().filter(|(_, d)| **d == digest).map(|(n, _)| n.clone()).collect()
        };
        let summary = self.summary(digest, names)?;
        let manifest = self.manifest(digest)?;
        let config = self.config(&manifest)?.config.unwrap_or_default();
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                Ok(LayerInfo { digest: l.digest.clone(), size: descriptor_size(l)?, media_type: l.media_type.clone() })
            })
            .collect::<Result<_, ImageError>>()?;
        Ok(ImageDetails {
            summary,
            config_digest: manifest.config.digest.clone(),
            layers,
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            env: config.env.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            user: config.user.filter(|u| !u.is_empty()),
        })
    }

    /// Remove the names `what` resolves to (one name, or every name of a digest). The blobs
    /// stay until the node's collection finds nothing uses them. Blocking.
    pub fn remove(&self, what: &str) -> Result<(Sha256Digest, Vec<String>), ImageError> {
        let digest = self.resolve(what).ok_or_else(|| ImageError::NotFound(what.to_owned()))?;
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        let by_name =
            refs.names.contains_key(what) || crate::normalize(what).is_ok_and(|n| refs.names.contains_key(&n));
        let removed: Vec<String> = if by_name {
            let name = if refs.names.contains_key(what) { what.to_owned() } else { crate::normalize(what)? };
            refs.names.remove(&name);
            vec![name]
        } else {
            let names: Vec<String> = refs.names.iter().filter(|(_, d)| **d == digest).map(|(n, _)| n.clone()).collect();
            for name in &names {
                refs.names.remove(name);
            }
            names
        };
        if removed.is_empty() {
            return Err(ImageError::NotFound(what.to_owned()));
        }
        self.save(&refs)?;
        Ok((digest, removed))
    }

    /// The blobs of every named image (manifests, configs, layers): what collection keeps.
    pub fn referenced(&self) -> BTreeSet<BlobId> {
        let digests: BTreeSet<Sha256Digest> =
            self.refs.lock().unwrap_or_else(PoisonError::into_inner).names.values().copied().collect();
        let mut keep = BTreeSet::new();
        for digest in digests {
            keep.extend(self.blobs_of(digest));
        }
        keep
    }

    /// Remove the unpacked roots of images no name points at any more (their blobs go with the
    /// store's collection). A root made without root privileges may hold read-only
    /// directories: their modes are relaxed first. Blocking; returns how many were removed.
    pub fn collect_roots(&self) -> usize {
        let named: BTreeSet<Sha256Digest> =
            self.refs.lock().unwrap_or_else(PoisonError::into_inner).names.values().copied().collect();
        let Ok(entries) = fs::read_dir(self.rootfs_dir()) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(digest) = entry.file_name().to_str().and_then(|h| format!("sha256:{h}").parse().ok()) else {
                continue;
            };
            if named.contains(&digest) {
                continue;
            }
            relax_modes(&entry.path());
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(%error, root = %entry.path().display(), "cannot remove an unused image root")
                }
            }
        }
        removed
    }

    /// The manifest's own blob, its config and its layers.
    pub fn blobs_of(&self, digest: Sha256Digest) -> BTreeSet<BlobId> {
        let mut blobs = BTreeSet::from([BlobId::Sha256(digest)]);
        if let Ok(manifest) = self.manifest(digest) {
            for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
                if let Ok(d) = descriptor_digest(descriptor) {
                    blobs.insert(BlobId::Sha256(d));
                }
            }
        }
        blobs
    }

    /// Write `refs.json` through a temporary file and a rename: it is whole or the old one.
    fn save(&self, refs: &Refs) -> Result<(), ImageError> {
        let path = self.dir.join("refs.json");
        let tmp = self.dir.join(format!(".refs.json.tmp-{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(refs).unwrap_or_default();
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|source| ImageError::Io { path, source })
    }

    /// The root filesystem of `digest`, unpacked once from its layers (read-only for every
    /// container of the image). Blocking.
    pub fn rootfs(&self, digest: Sha256Digest) -> Result<PathBuf, ImageError> {
        let dest = self.rootfs_dir().join(digest.hex());
        if dest.is_dir() {
            return Ok(dest);
        }
        let manifest = self.manifest(digest)?;
        let mut paths = Vec::new();
        for layer in &manifest.layers {
            let d = descriptor_digest(layer)?;
            let path = self.blobs.path(d).ok_or(ImageError::MissingBlob { digest: d, what: "a layer".into() })?;
            paths.push((layer.media_type.clone(), path));
        }
        fs::create_dir_all(self.rootfs_dir()).map_err(|source| ImageError::Io { path: self.rootfs_dir(), source })?;
        let layers: Vec<crate::unpack::LayerFile<'_>> = paths
            .iter()
            .map(|(media_type, path)| crate::unpack::LayerFile { media_type, path: path.as_path() })
            .collect();
        crate::unpack::unpack_layers(&layers, &dest, &crate::unpack::UnpackLimits::default())?;
        Ok(dest)
    }
}

/// Give the owner write and search permission on every directory under `dir` (never following
/// links), so the tree can be removed.
fn relax_modes(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
}

/// Parse an image manifest, refusing an index (the caller picks a platform first) and
/// anything that is not schema version 2.
pub fn parse_manifest(bytes: &[u8], digest: Sha256Digest) -> Result<OciImageManifest, ImageError> {
    let bad = |reason: String| ImageError::BadManifest { what: format!("manifest {digest}"), reason };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if value.get("manifests").is_some() {
        return Err(bad("it is an image index, not an image manifest".into()));
    }
    let manifest: OciImageManifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if manifest.schema_version != 2 {
        return Err(bad(format!("schema version {} (only 2 is supported)", manifest.schema_version)));
    }
    Ok(manifest)
}
