//! Fetching artifacts from peers over [`Protocol::Artifact`].
//!
//! Wire (postcard): the client sends a [`ChunkRequest`] `{ version, id, offset, len }` (version 1
//! names a BLAKE3 artifact by its 32 bytes; version 2 names any [`BlobId`], so OCI blobs by their
//! SHA-256 digest; a node sends version 1 whenever it can, which older nodes understand); the
//! server answers a [`ChunkReply`] header — `Chunk { total_size }`, `NotFound` or
//! `Error { message }` — and, after a `Chunk` header, the chunk's bytes raw, up to
//! [`CHUNK_BYTES`]. The client pulls chunks in order into a temporary file, hashing as it goes,
//! and stores the blob only if its hash (of the id's kind) is the id asked for.
//!
//! **Invariant:** the fetcher stores nothing whose hash differs from the requested id; a peer
//! that sends wrong bytes is reported and the next peer is tried.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use falak_core::{ArtifactId, NodeId};
use falak_transport::{Handler, Protocol, Transport, TransportError};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::id::BlobId;
use crate::store::{ArtifactStore, PutError, ReadError};

/// Largest chunk a server sends in one reply (4 MiB), well under the transport's 16 MiB limit.
pub const CHUNK_BYTES: u64 = 4 << 20;
/// The wire versions this node speaks: 1 (BLAKE3 artifacts) and 2 (any [`BlobId`]).
const WIRE_VERSIONS: [u8; 2] = [1, 2];
/// A request is a few dozen bytes; anything longer is not one.
pub const MAX_REQUEST_BYTES: usize = 128;
/// The longest error message a reply may carry; a longer one is a malformed reply.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 64 << 10;

/// Ask for `len` bytes of blob `id` from `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub version: u8,
    pub id: BlobId,
    pub offset: u64,
    pub len: u64,
}

/// Version 1 on the wire: a BLAKE3 artifact.
#[derive(Serialize, Deserialize)]
struct WireV1 {
    version: u8,
    id: ArtifactId,
    offset: u64,
    len: u64,
}

/// Version 2 on the wire: any blob.
#[derive(Serialize, Deserialize)]
struct WireV2 {
    version: u8,
    id: BlobId,
    offset: u64,
    len: u64,
}

impl ChunkRequest {
    /// A request in the oldest version that can name `id`.
    pub fn new(id: impl Into<BlobId>, offset: u64, len: u64) -> ChunkRequest {
        let id = id.into();
        let version = match id {
            BlobId::Blake3(_) => 1,
            BlobId::Sha256(_) => 2,
        };
        ChunkRequest { version, id, offset, len }
    }

    /// Encodes the request as the fetcher sends it (version 1 only for a BLAKE3 id).
    pub fn encode(&self) -> Vec<u8> {
        let (offset, len) = (self.offset, self.len);
        // Structs of integers and fixed-size ids always encode.
        match (self.version, self.id) {
            (1, BlobId::Blake3(id)) => postcard::to_allocvec(&WireV1 { version: 1, id, offset, len }),
            (_, id) => postcard::to_allocvec(&WireV2 { version: 2, id, offset, len }),
        }
        .unwrap_or_default()
    }

    /// Decodes a request as the server reads it: at most [`MAX_REQUEST_BYTES`], nothing after
    /// it, and this node's wire version.
    pub fn decode(body: &[u8]) -> Result<ChunkRequest, String> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "request of {} bytes is not a chunk request (at most {MAX_REQUEST_BYTES})",
                body.len()
            ));
        }
        let undecodable = |e: postcard::Error| format!("cannot decode the chunk request: {e}");
        // The version is the first byte (postcard writes a u8 as itself).
        match body.first() {
            Some(1) => {
                let w: WireV1 = postcard::from_bytes(body).map_err(undecodable)?;
                Ok(ChunkRequest { version: 1, id: BlobId::Blake3(w.id), offset: w.offset, len: w.len })
            }
            Some(2) => {
                let w: WireV2 = postcard::from_bytes(body).map_err(undecodable)?;
                Ok(ChunkRequest { version: 2, id: w.id, offset: w.offset, len: w.len })
            }
            Some(other) => Err(format!("unsupported request version {other}; this node speaks {WIRE_VERSIONS:?}")),
            None => Err("cannot decode the chunk request: it is empty".to_owned()),
        }
    }
}

/// The header of a reply; a `Chunk` header is followed by the chunk's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkReply {
    Chunk { total_size: u64 },
    NotFound,
    Error { message: String },
}

/// Why a fetch failed. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("artifact {id} is not stored here and no peer was given to fetch it from")]
    NoPeers { id: BlobId },
    #[error("could not fetch artifact {id} from any peer: {}; retry with a peer that holds it", Attempts(failures))]
    Unavailable { id: BlobId, failures: Vec<PeerFailure> },
    #[error("storing fetched artifact {id} failed: {source}")]
    Store {
        id: BlobId,
        #[source]
        source: PutError,
    },
}

/// One peer that did not deliver, and why.
#[derive(Debug, Clone)]
pub struct PeerFailure {
    pub peer: NodeId,
    pub error: PeerFetchError,
}

/// Why one peer did not deliver an artifact.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerFetchError {
    #[error("does not have it")]
    NotFound,
    #[error("{0}")]
    Transport(TransportError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("sent a malformed reply: {0}")]
    Malformed(String),
    #[error("claims {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("sent bytes hashing to {actual}, not the requested artifact")]
    HashMismatch { actual: BlobId },
}

struct Attempts<'a>(&'a [PeerFailure]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}peer {} {}", failure.peer.short(), failure.error)?;
        }
        Ok(())
    }
}

/// A fetched (or already stored) artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// The peer that served it; `None` when it was already stored before this fetcher ran.
    pub source: Option<NodeId>,
}

/// The [`Protocol::Artifact`] handler: serves chunks of the blobs in `store`.
pub fn serve(store: Arc<ArtifactStore>) -> impl Handler {
    ArtifactServer { store }
}

struct ArtifactServer {
    store: Arc<ArtifactStore>,
}

impl Handler for ArtifactServer {
    fn handle(&self, _from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let answer = tokio::task::spawn_blocking(move || answer(&store, &body))
                .await
                .map_err(|e| format!("the artifact server failed: {e}"))?;
            Ok(answer)
        })
    }
}

fn answer(store: &ArtifactStore, body: &[u8]) -> Bytes {
    let error = |message: String| encode_reply(&ChunkReply::Error { message }, &[]);
    let request = match ChunkRequest::decode(body) {
        Ok(request) => request,
        Err(message) => return error(message),
    };
    let id = request.id;
    let read =
        store.size(id).and_then(|size| Ok((size, store.read_range(id, request.offset, request.len.min(CHUNK_BYTES))?)));
    match read {
        Ok((total_size, bytes)) => encode_reply(&ChunkReply::Chunk { total_size }, &bytes),
        Err(ReadError::NotFound(_)) => encode_reply(&ChunkReply::NotFound, &[]),
        Err(e) => error(e.to_string()),
    }
}

/// Encodes a reply: the header, then (after a `Chunk` header) the chunk's bytes.
pub fn encode_reply(header: &ChunkReply, bytes: &[u8]) -> Bytes {
    // Encoding a small enum into a Vec cannot fail.
    let mut out = postcard::to_allocvec(header).unwrap_or_default();
    out.extend_from_slice(bytes);
    Bytes::from(out)
}

/// Decodes a reply as the fetcher reads it: a header, then the chunk (at most [`CHUNK_BYTES`])
/// after a `Chunk` header and nothing after any other. The reply as a whole is bounded by the
/// transport's message limit; an error message by [`MAX_ERROR_MESSAGE_BYTES`].
pub fn decode_reply(body: Bytes) -> Result<(ChunkReply, Bytes), String> {
    let (header, rest) = postcard::take_from_bytes::<ChunkReply>(&body).map_err(|e| e.to_string())?;
    let start = body.len() - rest.len();
    let tail = body.slice(start..);
    match &header {
        ChunkReply::Chunk { .. } if tail.len() as u64 > CHUNK_BYTES => {
            Err(format!("chunk of {} bytes is over the limit of {CHUNK_BYTES} bytes", tail.len()))
        }
        ChunkReply::Chunk { .. } => Ok((header, tail)),
        ChunkReply::Error { message } if message.len() > MAX_ERROR_MESSAGE_BYTES => Err(format!(
            "error message of {} bytes is over the limit of {MAX_ERROR_MESSAGE_BYTES} bytes",
            message.len()
        )),
        _ if !tail.is_empty() => Err(format!("{} unexpected bytes after the reply", tail.len())),
        _ => Ok((header, tail)),
    }
}

/// Fetches artifacts from peers into the local store, one transfer per artifact at a time.
pub struct Fetcher {
    transport: Arc<dyn Transport>,
    store: Arc<ArtifactStore>,
    /// One lock per artifact being fetched: later fetches of the same id wait for the first
    /// and then find it stored.
    in_flight: Mutex<HashMap<BlobId, Arc<tokio::sync::Mutex<()>>>>,
    /// Which peer served each artifact this fetcher fetched.
    sources: Mutex<HashMap<BlobId, NodeId>>,
}

impl Fetcher {
    pub fn new(transport: Arc<dyn Transport>, store: Arc<ArtifactStore>) -> Fetcher {
        Fetcher { transport, store, in_flight: Mutex::default(), sources: Mutex::default() }
    }

    /// The path of artifact `id`, fetching it from `peers` (in order) if it is not stored.
    pub async fn fetch(&self, id: impl Into<BlobId>, peers: &[NodeId]) -> Result<PathBuf, FetchError> {
        self.fetch_from(id, peers).await.map(|fetched| fetched.path)
    }

    /// Like [`Fetcher::fetch`], also saying which peer served the artifact.
    pub async fn fetch_from(&self, id: impl Into<BlobId>, peers: &[NodeId]) -> Result<Fetched, FetchError> {
        let id = id.into();
        if let Some(path) = self.store.path(id) {
            return Ok(Fetched { path, source: self.source(id) });
        }
        let flight = Flight::join(self, id);
        let _turn = flight.lock.lock().await;
        // A fetch that held the turn before us may have stored it.
        if let Some(path) = self.store.path(id) {
            return Ok(Fetched { path, source: self.source(id) });
        }
        self.transfer(id, peers).await
    }

    /// The peer that served `id` to this fetcher, if it fetched it.
    pub fn source(&self, id: impl Into<BlobId>) -> Option<NodeId> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).get(&id.into()).copied()
    }

    async fn transfer(&self, id: BlobId, peers: &[NodeId]) -> Result<Fetched, FetchError> {
        if peers.is_empty() {
            return Err(FetchError::NoPeers { id });
        }
        let mut failures = Vec::new();
        for &peer in peers {
            match self.fetch_one(id, peer).await {
                Ok(()) => {
                    tracing::info!(artifact = %id, peer = %peer.short(), "fetched artifact");
                    self.sources.lock().unwrap_or_else(PoisonError::into_inner).insert(id, peer);
                    return Ok(Fetched { path: self.store.blob_path(id), source: Some(peer) });
                }
                Err(Attempt::Peer(error)) => {
                    tracing::warn!(artifact = %id, peer = %peer.short(), %error, "peer did not deliver artifact");
                    failures.push(PeerFailure { peer, error });
                }
                Err(Attempt::Local(source)) => return Err(FetchError::Store { id, source }),
            }
        }
        Err(FetchError::Unavailable { id, failures })
    }

    async fn fetch_one(&self, id: BlobId, peer: NodeId) -> Result<(), Attempt> {
        let store = self.store.clone();
        let mut writer = blocking(move || store.writer_for(id.kind())).await?;
        let mut total = None;
        loop {
            let offset = writer.written();
            let request = ChunkRequest::new(id, offset, CHUNK_BYTES);
            let body = Bytes::from(request.encode());
            let reply =
                self.transport.request(peer, Protocol::Artifact, body).await.map_err(PeerFetchError::Transport)?;
            let (header, bytes) = decode_reply(reply).map_err(PeerFetchError::Malformed)?;
            let total_size = match header {
                ChunkReply::Chunk { total_size } => total_size,
                ChunkReply::NotFound => return Err(PeerFetchError::NotFound.into()),
                ChunkReply::Error { message } => return Err(PeerFetchError::Refused(message).into()),
            };
            check_chunk(id.max_bytes(), *total.get_or_insert(total_size), total_size, offset, bytes.len() as u64)?;
            writer = blocking(move || writer.write(&bytes).map(|()| writer)).await?;
            if writer.written() == total_size {
                break;
            }
        }
        blocking(move || writer.commit_expecting(id)).await.map_err(|e| match e {
            Attempt::Local(PutError::HashMismatch { actual, .. }) => PeerFetchError::HashMismatch { actual }.into(),
            other => other,
        })
    }
}

/// Check one chunk against what the peer said before, so a lying peer cannot make us loop or
/// write past the end.
fn check_chunk(limit: u64, first_total: u64, total: u64, offset: u64, len: u64) -> Result<(), PeerFetchError> {
    if total > limit {
        return Err(PeerFetchError::TooLarge { size: total, limit });
    }
    if total != first_total {
        return Err(PeerFetchError::Malformed(format!("total size changed from {first_total} to {total}")));
    }
    if len > CHUNK_BYTES || offset + len > total {
        return Err(PeerFetchError::Malformed(format!("chunk of {len} bytes at {offset} overruns {total} bytes")));
    }
    if len == 0 && offset < total {
        return Err(PeerFetchError::Malformed(format!("empty chunk at {offset} of {total} bytes")));
    }
    Ok(())
}

/// How one attempt failed: the peer's fault (try the next) or ours (stop).
enum Attempt {
    Peer(PeerFetchError),
    Local(PutError),
}

impl From<PeerFetchError> for Attempt {
    fn from(e: PeerFetchError) -> Attempt {
        Attempt::Peer(e)
    }
}

impl From<PutError> for Attempt {
    fn from(e: PutError) -> Attempt {
        Attempt::Local(e)
    }
}

/// Run blocking store IO off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PutError> + Send + 'static) -> Result<T, Attempt> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Attempt::Local),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Attempt::Local(PutError::Io { path: PathBuf::new(), source: std::io::Error::other(e) })),
    }
}

/// This fetch's membership in the single flight for one artifact; leaving removes the lock
/// once nobody else waits on it.
struct Flight<'a> {
    fetcher: &'a Fetcher,
    id: BlobId,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Flight<'a> {
    fn join(fetcher: &'a Fetcher, id: BlobId) -> Flight<'a> {
        let mut in_flight = fetcher.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = in_flight.entry(id).or_default().clone();
        Flight { fetcher, id, lock }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.fetcher.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are made only under this lock, so the count is exact: the map's and ours.
        if Arc::strong_count(&self.lock) == 2 {
            in_flight.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(store: &ArtifactStore, request: &ChunkRequest) -> (ChunkReply, Bytes) {
        decode_reply(answer(store, &request.encode())).unwrap()
    }

    #[test]
    fn the_server_clamps_chunks_and_refuses_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let bytes = vec![5u8; usize::try_from(CHUNK_BYTES).unwrap() + 10];
        let id = store.put(&bytes).unwrap();
        let request = ChunkRequest::new(id, 0, u64::MAX);
        let (header, chunk) = ask(&store, &request);
        assert_eq!(header, ChunkReply::Chunk { total_size: CHUNK_BYTES + 10 });
        assert_eq!(chunk.len() as u64, CHUNK_BYTES, "a chunk is clamped to CHUNK_BYTES");
        let (_, tail) = ask(&store, &ChunkRequest { offset: CHUNK_BYTES, ..request.clone() });
        assert_eq!(tail.len(), 10);

        let (header, _) = ask(&store, &ChunkRequest { offset: CHUNK_BYTES + 11, ..request.clone() });
        assert!(matches!(header, ChunkReply::Error { message } if message.contains("past the end")));
        let mut unknown = request.encode();
        unknown[0] = 9;
        let (header, _) = decode_reply(answer(&store, &unknown)).unwrap();
        assert!(matches!(header, ChunkReply::Error { message } if message.contains("unsupported request version 9")));
        let (header, _) = ask(&store, &ChunkRequest { id: ArtifactId([1; 32]).into(), ..request });
        assert_eq!(header, ChunkReply::NotFound);
        let (header, _) = decode_reply(answer(&store, b"\x01\xff\xff")).unwrap();
        assert!(matches!(header, ChunkReply::Error { message } if message.contains("cannot decode")));
        let (header, _) = decode_reply(answer(&store, b"\x02\x07")).unwrap();
        assert!(matches!(header, ChunkReply::Error { message } if message.contains("cannot decode")));
        let (header, _) = decode_reply(answer(&store, &[0; 1024])).unwrap();
        assert!(matches!(header, ChunkReply::Error { .. }));
    }

    #[test]
    fn replies_over_their_limits_or_with_trailing_bytes_are_malformed() {
        let chunk = vec![0u8; usize::try_from(CHUNK_BYTES).unwrap() + 1];
        let e = decode_reply(encode_reply(&ChunkReply::Chunk { total_size: CHUNK_BYTES + 1 }, &chunk)).unwrap_err();
        assert_eq!(e, format!("chunk of {} bytes is over the limit of {CHUNK_BYTES} bytes", CHUNK_BYTES + 1));
        let message = "m".repeat(MAX_ERROR_MESSAGE_BYTES + 1);
        let e = decode_reply(encode_reply(&ChunkReply::Error { message }, &[])).unwrap_err();
        assert_eq!(e, format!("error message of 65537 bytes is over the limit of {MAX_ERROR_MESSAGE_BYTES} bytes"));
        let e = decode_reply(encode_reply(&ChunkReply::NotFound, b"xy")).unwrap_err();
        assert_eq!(e, "2 unexpected bytes after the reply");
        let e = ChunkRequest::decode(&[0; MAX_REQUEST_BYTES + 1]).unwrap_err();
        assert_eq!(e, "request of 129 bytes is not a chunk request (at most 128)");
    }

    #[test]
    fn requests_name_artifacts_in_version_1_and_oci_blobs_in_version_2() {
        let artifact = ChunkRequest::new(ArtifactId([0xab; 32]), 4 << 20, 4 << 20);
        assert_eq!(artifact.version, 1);
        assert_eq!(ChunkRequest::decode(&artifact.encode()), Ok(artifact));
        let blob = ChunkRequest::new(crate::Sha256Digest([0xcd; 32]), 0, 4 << 20);
        let wire = blob.encode();
        assert_eq!(
            wire,
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/artifact_fetch/request-sha256"))
                .unwrap(),
            "the committed fuzz seed"
        );
        assert_eq!(ChunkRequest::decode(&wire), Ok(blob));
    }

    #[test]
    fn a_lying_peer_cannot_overrun_or_stall_the_fetch() {
        assert!(check_chunk(crate::MAX_ARTIFACT_BYTES, 10, 10, 0, 10).is_ok());
        assert!(check_chunk(crate::MAX_ARTIFACT_BYTES, 0, 0, 0, 0).is_ok());
        assert!(
            matches!(check_chunk(crate::MAX_ARTIFACT_BYTES, 10, 12, 4, 4), Err(PeerFetchError::Malformed(m)) if m.contains("changed"))
        );
        assert!(
            matches!(check_chunk(crate::MAX_ARTIFACT_BYTES, 10, 10, 8, 4), Err(PeerFetchError::Malformed(m)) if m.contains("overruns"))
        );
        assert!(
            matches!(check_chunk(crate::MAX_ARTIFACT_BYTES, 10, 10, 4, 0), Err(PeerFetchError::Malformed(m)) if m.contains("empty"))
        );
        let huge = crate::MAX_ARTIFACT_BYTES + 1;
        assert!(matches!(
            check_chunk(crate::MAX_ARTIFACT_BYTES, huge, huge, 0, 1),
            Err(PeerFetchError::TooLarge { .. })
        ));
        let big = CHUNK_BYTES * 4;
        assert!(matches!(
            check_chunk(crate::MAX_ARTIFACT_BYTES, big, big, 0, CHUNK_BYTES + 1),
            Err(PeerFetchError::Malformed(_))
        ));
    }
}
