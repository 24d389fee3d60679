//! Content-addressed blobs (BLAKE3 artifacts, SHA-256 OCI blobs): the on-disk store, code bundles, and fetching from peers.
//!
//! - [`store`]: [`ArtifactStore`], blobs named by their hash under one directory, with GC.
//! - [`bundle`]: [`pack`] a directory into a deterministic tar.gz, [`unpack`] one safely.
//! - [`fetch`]: [`serve`] chunks to peers and [`Fetcher`] pulls them over
//!   `Protocol::Artifact`, verifying the hash before storing.
//!
//! `docs/design/artifacts.md` describes the layout, the limits and the protocol.
//!
//! **Invariant:** nothing is stored under an id its bytes do not hash to.
//! **Boundary:** this crate never reads the clock; callers pass `now`.

pub mod budget;
pub mod bundle;
pub mod fetch;
pub mod id;
pub mod staging;
pub mod store;

pub use bundle::{BundleError, MAX_BUNDLE_BYTES, UnpackReport, pack, unpack, validate};
pub use fetch::{
    CHUNK_BYTES, ChunkReply, ChunkRequest, FetchError, Fetched, Fetcher, PeerFailure, PeerFetchError, decode_reply,
    encode_reply, serve,
};
pub use id::{BlobId, HashKind, MAX_OCI_BLOB_BYTES, ParseDigestError, Sha256Digest};
pub use store::{
    ArtifactStore, BlobInfo, BlobWriter, GcReport, ListError, MAX_ARTIFACT_BYTES, OpenStoreError, PutError, ReadError,
    VerifyError,
};
