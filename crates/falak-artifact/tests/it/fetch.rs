use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use falak_artifact::{ArtifactStore, FetchError, Fetcher, PeerFetchError, serve};
use falak_core::{ArtifactId, NodeId};
use falak_transport::{Handler, MemoryConfig, MemoryNetwork, Protocol, Transport};
use futures_util::future::BoxFuture;

/// One node of the test mesh: its store, served over `Protocol::Artifact`, and its fetcher.
struct Node {
    id: NodeId,
    store: Arc<ArtifactStore>,
    fetcher: Fetcher,
    /// Artifact requests this node has served.
    served: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// Counts the requests reaching the real handler.
struct Counting {
    inner: Arc<dyn Handler>,
    count: Arc<AtomicUsize>,
}

impl Handler for Counting {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.handle(from, body)
    }
}

fn node(network: &MemoryNetwork, n: u8) -> Node {
    let id = NodeId([n; 32]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ArtifactStore::open(dir.path()).unwrap());
    let transport = network.transport(id);
    let served = Arc::new(AtomicUsize::new(0));
    transport
        .serve(Protocol::Artifact, Arc::new(Counting { inner: Arc::new(serve(store.clone())), count: served.clone() }));
    let fetcher = Fetcher::new(transport, store.clone());
    Node { id, store, fetcher, served, _dir: dir }
}

fn mesh(config: MemoryConfig) -> (MemoryNetwork, Node, Node, Node) {
    let network = MemoryNetwork::with_config(config);
    let (a, b, c) = (node(&network, 1), node(&network, 2), node(&network, 3));
    (network, a, b, c)
}

/// Deterministic bytes that do not compress to a pattern the test could get right by luck.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn a_node_fetches_from_the_next_peer_when_the_first_is_down() {
    let (network, a, b, c) = mesh(MemoryConfig::default());
    let bytes = payload(10_000);
    let id = a.store.put(&bytes).unwrap();
    b.store.put(&bytes).unwrap();
    network.crash(a.id);

    let fetched = c.fetcher.fetch_from(id, &[a.id, b.id]).await.unwrap();
    assert_eq!(fetched.source, Some(b.id));
    assert_eq!(fs::read(&fetched.path).unwrap(), bytes);
    assert_eq!(c.fetcher.source(id), Some(b.id));
    c.store.verify(id).unwrap();
    assert_eq!(b.served.load(Ordering::SeqCst), 1);

    // Already stored: no request at all.
    assert_eq!(c.fetcher.fetch(id, &[b.id]).await.unwrap(), fetched.path);
    assert_eq!(b.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cut_link_sends_the_fetch_to_the_next_peer() {
    let (network, a, b, c) = mesh(MemoryConfig::default());
    let id = a.store.put(b"bundle").unwrap();
    b.store.put(b"bundle").unwrap();
    network.cut(c.id, a.id);
    let fetched = c.fetcher.fetch_from(id, &[a.id, b.id]).await.unwrap();
    assert_eq!(fetched.source, Some(b.id));
    assert_eq!(a.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_peer_serving_corrupt_bytes_is_rejected_and_the_next_one_used() {
    let (_network, a, b, c) = mesh(MemoryConfig::default());
    let bytes = payload(5_000);
    let id = a.store.put(&bytes).unwrap();
    b.store.put(&bytes).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[4_000] ^= 0xff;
    fs::write(a.store.path(id).unwrap(), &corrupt).unwrap();

    // From the corrupt peer alone: refused, nothing stored.
    let err = c.fetcher.fetch(id, &[a.id]).await.unwrap_err();
    let FetchError::Unavailable { failures, .. } = &err else { panic!("unexpected error: {err}") };
    assert!(matches!(failures[0].error, PeerFetchError::HashMismatch { actual } if actual != id.into()), "{err}");
    assert!(!c.store.contains(id));
    assert!(c.store.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(c.store.blobs_dir()).unwrap().flatten().filter(|e| e.path().is_file()).count(),
        0,
        "a temporary file was left"
    );

    let fetched = c.fetcher.fetch_from(id, &[a.id, b.id]).await.unwrap();
    assert_eq!(fetched.source, Some(b.id));
    assert_eq!(fs::read(fetched.path).unwrap(), bytes);
}

#[tokio::test]
async fn a_missing_artifact_names_every_peer_tried_and_why() {
    let (network, a, b, c) = mesh(MemoryConfig::default());
    network.crash(b.id);
    let id = ArtifactId(*blake3::hash(b"nobody has this").as_bytes());
    let err = c.fetcher.fetch(id, &[a.id, b.id]).await.unwrap_err();
    let FetchError::Unavailable { id: missing, failures } = &err else { panic!("unexpected error: {err}") };
    assert_eq!(*missing, id.into());
    assert_eq!(failures.iter().map(|f| f.peer).collect::<Vec<_>>(), vec![a.id, b.id]);
    assert!(matches!(failures[0].error, PeerFetchError::NotFound));
    assert!(matches!(failures[1].error, PeerFetchError::Transport(_)));
    let message = err.to_string();
    assert!(message.contains(&id.to_string()), "{message}");
    assert!(message.contains(&format!("peer {} does not have it", a.id.short())), "{message}");
    assert!(message.contains(&format!("peer {} node {} unreachable", b.id.short(), b.id.short())), "{message}");

    let err = c.fetcher.fetch(id, &[]).await.unwrap_err();
    assert!(matches!(err, FetchError::NoPeers { .. }), "{err}");
}

#[tokio::test]
async fn an_artifact_larger_than_one_chunk_arrives_intact() {
    let (_network, a, _b, c) = mesh(MemoryConfig::default());
    let bytes = payload(9 << 20);
    let id = a.store.put(&bytes).unwrap();
    let path = c.fetcher.fetch(id, &[a.id]).await.unwrap();
    assert_eq!(fs::read(path).unwrap(), bytes);
    assert_eq!(a.served.load(Ordering::SeqCst), 3, "9 MiB in chunks of 4 MiB");
}

#[tokio::test]
async fn an_empty_artifact_is_fetched() {
    let (_network, a, _b, c) = mesh(MemoryConfig::default());
    let id = a.store.put(b"").unwrap();
    let path = c.fetcher.fetch(id, &[a.id]).await.unwrap();
    assert_eq!(fs::read(path).unwrap(), b"");
}

#[tokio::test]
async fn concurrent_fetches_of_one_artifact_share_one_transfer() {
    let config =
        MemoryConfig { delay: (Duration::from_millis(1), Duration::from_millis(5)), ..MemoryConfig::default() };
    let (_network, a, _b, c) = mesh(config);
    let bytes = payload(9 << 20);
    let id = a.store.put(&bytes).unwrap();
    let peers = [a.id];
    let (first, second) = tokio::join!(c.fetcher.fetch_from(id, &peers), c.fetcher.fetch_from(id, &peers));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.path, second.path);
    assert_eq!((first.source, second.source), (Some(a.id), Some(a.id)));
    assert_eq!(a.served.load(Ordering::SeqCst), 3, "the second fetch started its own transfer");
    assert_eq!(fs::read(first.path).unwrap(), bytes);
}

/// OCI blobs are named by their SHA-256 digest; a peer serves them like artifacts (version 2
/// requests), the fetcher checks the digest, and a lying peer's bytes are refused.
#[tokio::test]
async fn an_oci_blob_travels_by_its_sha256_digest_and_a_wrong_one_is_refused() {
    use falak_artifact::{BlobId, Sha256Digest};
    let (_network, a, b, c) = mesh(MemoryConfig::default());
    let layer = payload(9 << 20);
    let digest = Sha256Digest::of(&layer);
    a.store.put_expecting(digest, &layer).unwrap();
    assert!(a.store.contains(digest));
    assert!(a.store.path(digest).unwrap().ends_with(format!("blobs/sha256/{}", digest.hex())));
    assert_eq!(a.store.list().unwrap().iter().map(|blob| blob.id).collect::<Vec<_>>(), vec![BlobId::Sha256(digest)]);

    let fetched = b.fetcher.fetch_from(digest, &[c.id, a.id]).await.unwrap();
    assert_eq!(fetched.source, Some(a.id));
    assert_eq!(fs::read(&fetched.path).unwrap(), layer);
    b.store.verify(digest).unwrap();
    assert!(a.served.load(Ordering::SeqCst) >= 3, "9 MiB come in 4 MiB chunks");

    // A peer holding other bytes under that name (a tampered disk) is caught by the digest.
    let lie = Sha256Digest::of(b"another layer");
    let forged = c.store.blobs_dir().join("sha256").join(lie.hex());
    fs::write(&forged, b"not that layer").unwrap();
    let err = a.fetcher.fetch(lie, &[c.id]).await.unwrap_err();
    let FetchError::Unavailable { failures, .. } = &err else { panic!("{err}") };
    assert!(matches!(failures[0].error, PeerFetchError::HashMismatch { .. }), "{err}");
    assert!(!a.store.contains(lie));

    // The same bytes under a BLAKE3 name are a different blob.
    assert!(!a.store.contains(ArtifactId(*blake3::hash(&layer).as_bytes())));
}
