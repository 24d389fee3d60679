//! `falak image import FILE`: an OCI image layout (a directory, or a tar of one, as
//! `skopeo copy … oci-archive:` writes) or a docker archive (`docker save`). Every blob is
//! stored under the SHA-256 of its bytes; a blob the layout names by digest must hash to it.
//! A docker archive's image gets an OCI manifest made here, so it has a digest like any other.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use falak_artifact::{ArtifactStore, HashKind, Sha256Digest};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};
use serde::{Deserialize, Serialize};

use crate::store::{Images, MAX_MANIFEST_BYTES, parse_manifest};
use crate::{ImageError, host_platform};

/// At most this many entries in an archive.
const MAX_ENTRIES: usize = 100_000;

/// One image an import stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub digest: Sha256Digest,
    /// The names it was given (none when the archive names none and no name was asked for).
    pub names: Vec<String>,
}

/// What an archive held: the small JSON files that describe it, and every other file stored.
#[derive(Default)]
struct Collected {
    json: BTreeMap<String, Vec<u8>>,
    files: BTreeMap<String, Sha256Digest>,
}

/// The files that describe an archive; read into memory (bounded), never stored.
const DESCRIPTORS: [&str; 4] = ["index.json", "oci-layout", "manifest.json", "repositories"];

/// `docker save`'s `manifest.json` entries.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Import the image(s) at `path`, naming them `name` when given (one image only), else by the
/// names the archive carries. Blocking.
pub fn import(images: &Images, path: &Path, name: Option<&str>) -> Result<Vec<Imported>, ImageError> {
    let bad = |reason: String| ImageError::BadArchive { path: path.to_owned(), reason };
    let meta = fs::metadata(path).map_err(|source| ImageError::Io { path: path.to_owned(), source })?;
    let collected = if meta.is_dir() { collect_dir(images.blobs(), path)? } else { collect_tar(images.blobs(), path)? };
    let found = if collected.json.contains_key("index.json") {
        oci_images(images, &collected).map_err(|e| retarget(e, path))?
    } else if let Some(manifest) = collected.json.get("manifest.json") {
        docker_images(images, &collected, manifest).map_err(|e| retarget(e, path))?
    } else {
        return Err(bad("it has neither an index.json (an OCI image layout) nor a manifest.json (a docker archive); \
             export the image with `skopeo copy … oci-archive:FILE` or `docker save`"
            .into()));
    };
    if found.is_empty() {
        return Err(bad("it names no image".into()));
    }
    if name.is_some() && found.len() > 1 {
        return Err(bad(format!("it holds {} images; --name names one, so import it without", found.len())));
    }
    let mut imported = Vec::new();
    for (digest, names) in found {
        let names: Vec<String> = match name {
            Some(name) => vec![crate::normalize(name)?],
            None => names,
        };
        if let Some(first) = images.manifest(digest).and_then(|m| images.missing(&m))?.first() {
            return Err(bad(format!("image {digest} names blob {} which the archive does not hold", first.digest)));
        }
        // Unpacked before it is named: a layer that escapes its root is refused here.
        images.rootfs(digest)?;
        for n in &names {
            images.tag(n, digest)?;
        }
        imported.push(Imported { digest, names });
    }
    Ok(imported)
}

/// Errors about the archive's insides name the archive.
fn retarget(error: ImageError, path: &Path) -> ImageError {
    match error {
        ImageError::BadManifest { what, reason } => {
            ImageError::BadArchive { path: path.to_owned(), reason: format!("{what} is not usable: {reason}") }
        }
        other => other,
    }
}

/// An archive path as `a/b/c`: `./` dropped; `..`, absolute and empty names refused.
fn clean(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Store one file's bytes: verified against its name under `blobs/sha256/`, hashed otherwise.
fn store_file(
    store: &ArtifactStore,
    name: &str,
    reader: &mut dyn Read,
    collected: &mut Collected,
) -> Result<(), ImageError> {
    let store_error = |e: falak_artifact::PutError| ImageError::Store(format!("{name}: {e}"));
    if DESCRIPTORS.contains(&name) {
        let mut bytes = Vec::new();
        reader.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|source| io_error(name, source))?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ImageError::BadManifest {
                what: name.to_owned(),
                reason: format!("it is over {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        collected.json.insert(name.to_owned(), bytes);
        return Ok(());
    }
    let expected = name.strip_prefix("blobs/sha256/").map(|hex| format!("sha256:{hex}").parse::<Sha256Digest>());
    let mut writer = store.writer_for(HashKind::Sha256).map_err(store_error)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|source| io_error(name, source))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n]).map_err(store_error)?;
    }
    let digest = match expected {
        Some(Ok(digest)) => {
            writer.commit_expecting(digest).map_err(|e| match e {
                falak_artifact::PutError::HashMismatch { actual, .. } => ImageError::DigestMismatch {
                    what: name.to_owned(),
                    expected: digest.to_string(),
                    actual: actual.to_string(),
                },
                other => store_error(other),
            })?;
            digest
        }
        // Not named by a digest (a docker archive's `<id>/layer.tar`): named by what it hashes to.
        _ => match writer.commit().map_err(store_error)? {
            falak_artifact::BlobId::Sha256(digest) => digest,
            other => return Err(ImageError::Store(format!("{name}: stored as {other}, not by SHA-256"))),
        },
    };
    collected.files.insert(name.to_owned(), digest);
    Ok(())
}

fn io_error(name: &str, source: io::Error) -> ImageError {
    ImageError::Io { path: PathBuf::from(name), source }
}

/// An OCI image layout directory: its descriptor files and every blob under `blobs/sha256/`.
fn collect_dir(store: &ArtifactStore, dir: &Path) -> Result<Collected, ImageError> {
    let mut collected = Collected::default();
    for name in DESCRIPTORS {
        let path = dir.join(name);
        if let Ok(mut file) = fs::File::open(&path) {
            store_file(store, name, &mut file, &mut collected)?;
        }
    }
    let blobs = dir.join("blobs/sha256");
    let entries = fs::read_dir(&blobs).map_err(|source| ImageError::Io { path: blobs.clone(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| ImageError::Io { path: blobs.clone(), source })?;
        let Some(hex) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let mut file = fs::File::open(entry.path()).map_err(|source| ImageError::Io { path: entry.path(), source })?;
        store_file(store, &format!("blobs/sha256/{hex}"), &mut file, &mut collected)?;
    }
    Ok(collected)
}

/// A tar (or gzip-compressed tar) of a layout or a docker archive, read once, in order.
fn collect_tar(store: &ArtifactStore, path: &Path) -> Result<Collected, ImageError> {
    let bad = |reason: String| ImageError::BadArchive { path: path.to_owned(), reason };
    let mut file = fs::File::open(path).map_err(|source| ImageError::Io { path: path.to_owned(), source })?;
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = fs::File::open(path).map_err(|source| ImageError::Io { path: path.to_owned(), source })?;
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(io::BufReader::new(file)) };
    let mut archive = tar::Archive::new(reader);
    let mut collected = Collected::default();
    let entries = archive.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("entry {count}: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path().map_err(|e| bad(format!("entry {count}: {e}")))?.into_owned();
        let Some(name) = clean(&raw) else {
            return Err(bad(format!("entry {} escapes the archive", raw.display())));
        };
        store_file(store, &name, &mut entry, &mut collected)?;
    }
    Ok(collected)
}

/// The images an OCI layout's `index.json` names: each manifest, or this platform's manifest
/// of a nested index, with the name its annotations give.
fn oci_images(images: &Images, collected: &Collected) -> Result<Vec<(Sha256Digest, Vec<String>)>, ImageError> {
    let bad = |reason: String| ImageError::BadManifest { what: "index.json".into(), reason };
    let index: OciImageIndex = serde_json::from_slice(&collected.json["index.json"]).map_err(|e| bad(e.to_string()))?;
    let mut found = Vec::new();
    for entry in &index.manifests {
        let annotations = entry.annotations.clone().unwrap_or_default();
        let mut digest: Sha256Digest =
            entry.digest.parse().map_err(|e: falak_artifact::ParseDigestError| bad(e.to_string()))?;
        if entry.media_type.contains("index") || entry.media_type.contains("manifest.list") {
            digest = pick_platform(images, digest)?;
        }
        parse_manifest(&images.blobs().read(digest).map_err(|e| ImageError::Store(e.to_string()))?, digest)?;
        // A full name (containerd's annotation, or a ref name with a repository); a bare tag
        // (`v1`, as skopeo writes) names nothing without a repository: `--name` gives one.
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/')))
            .and_then(|n| crate::normalize(n).ok());
        found.push((digest, name.into_iter().collect()));
    }
    Ok(found)
}

/// This node's platform's manifest of the image index `digest`.
pub fn pick_platform(images: &Images, digest: Sha256Digest) -> Result<Sha256Digest, ImageError> {
    let bad = |reason: String| ImageError::BadManifest { what: format!("image index {digest}"), reason };
    let bytes = images.blobs().read(digest).map_err(|e| ImageError::Store(e.to_string()))?;
    let index: OciImageIndex = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let (os, arch) = host_platform();
    let entry = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os.to_string() == os && p.architecture.to_string() == arch))
        .ok_or_else(|| bad(format!("it has no image for {os}/{arch}")))?;
    entry.digest.parse().map_err(|e: falak_artifact::ParseDigestError| bad(e.to_string()))
}

/// The images of a docker archive, each given an OCI manifest made from its config and layers.
fn docker_images(
    images: &Images,
    collected: &Collected,
    manifest_json: &[u8],
) -> Result<Vec<(Sha256Digest, Vec<String>)>, ImageError> {
    let bad = |reason: String| ImageError::BadManifest { what: "manifest.json".into(), reason };
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json).map_err(|e| bad(e.to_string()))?;
    let file = |name: &str| {
        let name = clean(Path::new(name)).unwrap_or_default();
        collected
            .files
            .get(&name)
            .copied()
            .ok_or_else(|| bad(format!("it names {name}, which the archive does not hold")))
    };
    let descriptor = |media_type: &str, digest: Sha256Digest| -> Result<OciDescriptor, ImageError> {
        let size = images.blobs().size(digest).map_err(|e| ImageError::Store(e.to_string()))?;
        Ok(OciDescriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        })
    };
    let mut found = Vec::new();
    for entry in entries {
        let config = descriptor(IMAGE_CONFIG_MEDIA_TYPE, file(&entry.config)?)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let digest = file(layer)?;
            let media_type = if is_gzip(images, digest) { IMAGE_LAYER_GZIP_MEDIA_TYPE } else { IMAGE_LAYER_MEDIA_TYPE };
            layers.push(descriptor(media_type, digest)?);
        }
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
            config,
            layers,
            subject: None,
            artifact_type: None,
            annotations: None,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))?;
        let digest = Sha256Digest::of(&bytes);
        images.blobs().put_expecting(digest, &bytes).map_err(|e| ImageError::Store(e.to_string()))?;
        let names =
            entry.repo_tags.unwrap_or_default().iter().map(|t| crate::normalize(t)).collect::<Result<_, _>>()?;
        found.push((digest, names));
    }
    Ok(found)
}

fn is_gzip(images: &Images, digest: Sha256Digest) -> bool {
    let Some(path) = images.blobs().path(digest) else { return false };
    let mut magic = [0u8; 2];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1f, 0x8b]
}
