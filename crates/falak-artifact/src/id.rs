//! What names a blob: the BLAKE3 hash of its bytes (Falak's own artifacts: code bundles), or
//! their SHA-256 digest (OCI image blobs: manifests, configs, layers, as registries name them).

use std::fmt;
use std::str::FromStr;

use falak_core::ArtifactId;
use serde::{Deserialize, Serialize};

/// The largest OCI blob (a layer) the store takes: 8 GiB.
pub const MAX_OCI_BLOB_BYTES: u64 = 8 << 30;

/// A SHA-256 digest, written `sha256:<64 lowercase hex>` as the OCI image spec writes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        use sha2::Digest as _;
        Sha256Digest(sha2::Sha256::digest(bytes).into())
    }

    /// The 64 hex characters without the `sha256:` prefix (a file name in an OCI layout).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, for tables.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.short())
    }
}

/// Why a digest did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a supported digest: write `sha256:` and 64 lowercase hex characters (other algorithms are not supported)"
)]
pub struct ParseDigestError(pub String);

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseDigestError(s.chars().take(100).collect());
        let hex = s.strip_prefix("sha256:").ok_or_else(error)?;
        if hex.len() != 64 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(error());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| error())?;
        Ok(Sha256Digest(out))
    }
}

/// A blob's name in the store and on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BlobId {
    Blake3(ArtifactId),
    Sha256(Sha256Digest),
}

impl BlobId {
    /// The most bytes a blob of this kind may hold: 256 MiB for Falak's artifacts, 8 GiB for
    /// OCI blobs (image layers).
    pub fn max_bytes(&self) -> u64 {
        match self {
            BlobId::Blake3(_) => crate::store::MAX_ARTIFACT_BYTES,
            BlobId::Sha256(_) => MAX_OCI_BLOB_BYTES,
        }
    }

    pub fn kind(&self) -> HashKind {
        match self {
            BlobId::Blake3(_) => HashKind::Blake3,
            BlobId::Sha256(_) => HashKind::Sha256,
        }
    }
}

impl From<ArtifactId> for BlobId {
    fn from(id: ArtifactId) -> BlobId {
        BlobId::Blake3(id)
    }
}

impl From<Sha256Digest> for BlobId {
    fn from(digest: Sha256Digest) -> BlobId {
        BlobId::Sha256(digest)
    }
}

/// Falak's artifacts print as their 64 hex characters (as before), OCI blobs as `sha256:…`.
impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobId::Blake3(id) => id.fmt(f),
            BlobId::Sha256(digest) => digest.fmt(f),
        }
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobId::Blake3(id) => id.fmt(f),
            BlobId::Sha256(digest) => digest.fmt(f),
        }
    }
}

/// Which hash names a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Blake3,
    Sha256,
}

/// A running hash of either kind.
#[derive(Clone)]
pub(crate) enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn new(kind: HashKind) -> Hasher {
        match kind {
            HashKind::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            HashKind::Sha256 => Hasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }

    pub(crate) fn finalize(self) -> BlobId {
        match self {
            Hasher::Blake3(h) => BlobId::Blake3(ArtifactId(*h.finalize().as_bytes())),
            Hasher::Sha256(h) => BlobId::Sha256(Sha256Digest(sha2::Digest::finalize(h).into())),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hasher::Blake3(_) => f.write_str("Hasher::Blake3"),
            Hasher::Sha256(_) => f.write_str("Hasher::Sha256"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_only_in_their_canonical_form() {
        let digest = Sha256Digest::of(b"hello");
        let text = digest.to_string();
        assert_eq!(text, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(text.parse::<Sha256Digest>().unwrap(), digest);
        for bad in ["2cf24dba", "sha512:00", "sha256:../../etc", &text.to_uppercase(), &format!("{text}0")] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_kind_hashes_with_its_own_function() {
        let mut blake = Hasher::new(HashKind::Blake3);
        blake.update(b"hello");
        assert_eq!(blake.finalize(), BlobId::Blake3(ArtifactId(*blake3::hash(b"hello").as_bytes())));
        let mut sha = Hasher::new(HashKind::Sha256);
        sha.update(b"hel");
        sha.update(b"lo");
        assert_eq!(sha.finalize(), BlobId::Sha256(Sha256Digest::of(b"hello")));
    }
}
