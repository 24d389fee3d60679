//! Pulls from OCI distribution registries through `oci-client`: HTTPS, plain HTTP only for the
//! registries the node config names, anonymous, basic or token auth (the client answers a
//! `WWW-Authenticate` challenge itself), by tag or by digest, this platform's manifest from an
//! index. Every manifest and blob is checked against its digest before it is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use falak_artifact::{HashKind, Sha256Digest};
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
    OciDescriptor,
};
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::ImageError;
use crate::store::{Images, descriptor_digest, descriptor_size, parse_manifest};

/// How the node signs in to one registry (node config `registry_auth`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, derive_more::Debug)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    #[debug("<redacted>")]
    pub password: String,
}

/// A registry client for this node.
pub struct Registry {
    client: Client,
    auth: BTreeMap<String, RegistryAuth>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("auth", &self.auth.keys().collect::<Vec<_>>()).finish()
    }
}

/// Buffer this much of a blob before writing it to disk off the async threads.
const WRITE_CHUNK: usize = 4 << 20;

impl Registry {
    /// `insecure`: `host:port`s reached over plain HTTP; `auth`: credentials by `host:port`.
    pub fn new(insecure: Vec<String>, auth: BTreeMap<String, RegistryAuth>) -> Registry {
        // The client's rustls has no provider of its own: the process uses ring, the only one
        // this binary carries. Installing fails harmlessly when it already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if insecure.is_empty() { ClientProtocol::Https } else { ClientProtocol::HttpsExcept(insecure) },
            // Indexes are resolved here, with the node's own platform.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        Registry { client: Client::new(config), auth }
    }

    fn auth_for(&self, reference: &Reference) -> oci_client::secrets::RegistryAuth {
        match self.auth.get(reference.registry()).or_else(|| self.auth.get(reference.resolve_registry())) {
            Some(a) => oci_client::secrets::RegistryAuth::Basic(a.username.clone(), a.password.clone()),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        }
    }

    /// Resolve `reference` to this platform's image manifest and store it (and the index it
    /// came from). A reference by digest must get exactly those bytes.
    pub async fn manifest(
        &self,
        images: &Arc<Images>,
        reference: &str,
    ) -> Result<(Reference, Sha256Digest), ImageError> {
        let parsed = Reference::try_from(reference)
            .map_err(|e| ImageError::BadReference(reference.to_owned(), e.to_string()))?;
        let (bytes, digest) = self.raw_manifest(&parsed).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::BadManifest { what: format!("manifest {digest}"), reason: e.to_string() })?;
        store_small(images, digest, bytes).await?;
        if value.get("manifests").is_none() {
            return Ok((parsed, digest));
        }
        // An index: this platform's entry, fetched by its digest.
        let images2 = images.clone();
        let chosen = tokio::task::spawn_blocking(move || crate::import::pick_platform(&images2, digest))
            .await
            .map_err(|e| ImageError::Store(e.to_string()))??;
        let by_digest = parsed.clone_with_digest(chosen.to_string());
        let (bytes, digest) = self.raw_manifest(&by_digest).await?;
        parse_manifest(&bytes, digest)?;
        store_small(images, digest, bytes).await?;
        Ok((parsed, digest))
    }

    async fn raw_manifest(&self, reference: &Reference) -> Result<(bytes::Bytes, Sha256Digest), ImageError> {
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth_for(reference), &accepted)
            .await
            .map_err(|e| registry_error(reference, &e))?;
        if bytes.len() as u64 > crate::store::MAX_MANIFEST_BYTES {
            return Err(ImageError::BadManifest {
                what: format!("the manifest of {}", reference.whole()),
                reason: format!("{} bytes is over the limit", bytes.len()),
            });
        }
        let actual = Sha256Digest::of(&bytes);
        if let Some(expected) = reference.digest()
            && expected != actual.to_string()
        {
            return Err(ImageError::DigestMismatch {
                what: format!("the manifest of {}", reference.whole()),
                expected: expected.to_owned(),
                actual: actual.to_string(),
            });
        }
        Ok((bytes, actual))
    }

    /// Fetch one blob of `reference` into the store, checked against its digest and size.
    /// Returns the bytes fetched.
    pub async fn blob(
        &self,
        images: &Arc<Images>,
        reference: &Reference,
        descriptor: &OciDescriptor,
    ) -> Result<u64, ImageError> {
        let digest = descriptor_digest(descriptor)?;
        let size = descriptor_size(descriptor)?;
        let auth = self.auth_for(reference);
        self.client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
        let mut stream =
            self.client.pull_blob_stream(reference, descriptor).await.map_err(|e| registry_error(reference, &e))?;
        let store = images.blobs().clone();
        let mut writer = blocking(move || store.writer_for(HashKind::Sha256)).await?;
        let mut buffer = Vec::with_capacity(WRITE_CHUNK);
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let text = e.to_string();
                // The client hashes the stream too and ends it at a mismatch.
                match text.split_once(", got ") {
                    Some((_, actual)) if text.contains("Invalid digest") => ImageError::DigestMismatch {
                        what: format!("blob {digest} of {}", reference.whole()),
                        expected: digest.to_string(),
                        actual: actual.to_owned(),
                    },
                    _ => ImageError::Registry {
                        reference: reference.whole(),
                        message: format!("reading blob {digest}: {text}"),
                    },
                }
            })?;
            written += chunk.len() as u64;
            if written > size {
                return Err(ImageError::DigestMismatch {
                    what: format!("blob {digest} of {}", reference.whole()),
                    expected: format!("{size} bytes"),
                    actual: format!("more than {size} bytes"),
                });
            }
            buffer.extend_from_slice(&chunk);
            if buffer.len() >= WRITE_CHUNK {
                let full = std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK));
                writer = blocking(move || writer.write(&full).map(|()| writer)).await?;
            }
        }
        let commit = move || {
            writer.write(&buffer)?;
            writer.commit_expecting(digest)
        };
        blocking(commit).await.map_err(|e| match e {
            ImageError::Store(message) if message.contains("hash to") => ImageError::DigestMismatch {
                what: format!("blob {digest} of {}", reference.whole()),
                expected: digest.to_string(),
                actual: message,
            },
            other => other,
        })?;
        Ok(written)
    }
}

fn registry_error(reference: &Reference, error: &oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    let mut message = error.to_string();
    if matches!(error, E::AuthenticationFailure(_) | E::UnauthorizedError { .. }) {
        message.push_str(&format!(
            "; the registry wants credentials: give this node a `registry_auth` entry for {} in its node.yaml",
            reference.registry()
        ));
    }
    ImageError::Registry { reference: reference.whole(), message }
}

async fn store_small(images: &Arc<Images>, digest: Sha256Digest, bytes: bytes::Bytes) -> Result<(), ImageError> {
    let store = images.blobs().clone();
    blocking(move || store.put_expecting(digest, &bytes)).await
}

/// Run blocking store IO off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, falak_artifact::PutError> + Send + 'static,
) -> Result<T, ImageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| ImageError::Store(e.to_string())),
        Err(e) => Err(ImageError::Store(e.to_string())),
    }
}
