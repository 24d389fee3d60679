//! OCI images for container capsules: blobs named by their SHA-256 digest in the node's
//! artifact store (peers fetch them over the artifact protocol), an index of names
//! ([`Images`]), imports from OCI image layouts and docker archives ([`import`]), pulls from
//! registries ([`registry`]), and root filesystems unpacked from layers ([`unpack`]).
//! `docs/design/images.md`.
//!
//! **Invariant:** every blob an image uses is stored only under the digest of its bytes, and a
//! name points only at an image whose blobs are all stored.

pub mod import;
pub mod registry;
pub mod store;
pub mod unpack;
pub mod user;

use std::path::PathBuf;

use falak_artifact::Sha256Digest;

pub use import::{Imported, import};
pub use oci_client::Reference;
pub use registry::{Registry, RegistryAuth};
pub use store::{ImageDetails, ImageSummary, Images, LayerInfo};
pub use user::resolve_user;

/// Why an image operation failed; nothing half-made is left named.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image store: {0}")]
    Store(String),
    #[error("no image named {0:?} on this node; `falak image list` shows what it holds")]
    NotFound(String),
    #[error("{what} ({digest}) is not on this node")]
    MissingBlob { digest: Sha256Digest, what: String },
    #[error("{what} is not usable: {reason}")]
    BadManifest { what: String, reason: String },
    #[error("{what}: its bytes hash to {actual}, not {expected}; refused")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{path} is not an image archive: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("{0:?} is not an image reference: {1}; write e.g. `127.0.0.1:5000/app:v1` or `alpine@sha256:<hex>`")]
    BadReference(String, String),
    #[error("pulling {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
}

/// The full name of a reference as the index keys it: `alpine` → `docker.io/library/alpine:latest`,
/// `127.0.0.1:5000/app:v1` as it is. A reference by digest keeps it (`…@sha256:<hex>`).
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let parsed = oci_client::Reference::try_from(reference)
        .map_err(|e| ImageError::BadReference(reference.to_owned(), e.to_string()))?;
    Ok(parsed.whole())
}

/// This machine's platform as images name it (`linux/amd64`, `linux/arm64`).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_registries_read_them() {
        assert_eq!(normalize("alpine").unwrap(), "docker.io/library/alpine:latest");
        assert_eq!(normalize("127.0.0.1:5000/app:v1").unwrap(), "127.0.0.1:5000/app:v1");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("127.0.0.1:5000/app@{digest}")).unwrap(), format!("127.0.0.1:5000/app@{digest}"));
        let error = normalize("Not A Name").unwrap_err().to_string();
        assert!(error.starts_with("\"Not A Name\" is not an image reference"), "{error}");
    }
}
