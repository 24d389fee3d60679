//! Must-show: 1,000 mutated artifact fetch messages of each type; none is accepted with altered
//! content.
//!
//! Which layer rejects what: on the network, QUIC's packet protection refuses every mutated
//! datagram (`falak-transport`'s `tamper` test). These tests are the layer below, bytes that an
//! authenticated peer mutated on purpose. A mutated request is refused by the server's decoder
//! (size, postcard, wire version) or is a well-formed request for some range of some blob,
//! which the server answers from its store as it would answer anyone admitted. A mutated reply
//! is refused by the fetcher's checks (decoder, sizes and offsets) or, at the latest, by the
//! BLAKE3 hash of the assembled blob: nothing is stored under an id its bytes do not hash to.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use falak_artifact::{ArtifactStore, ChunkReply, ChunkRequest, Fetcher, decode_reply, serve};
use falak_core::NodeId;
use falak_transport::{Handler, MemoryNetwork, Protocol, Transport, TransportError};
use futures_util::future::BoxFuture;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mutate(rng: &mut ChaCha8Rng, genuine: &[u8]) -> Vec<u8> {
    loop {
        let mut bytes = genuine.to_vec();
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..5) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.r#gen(),
            2 => bytes.insert(at, rng.r#gen()),
            3 => drop(bytes.drain(at..(at + rng.gen_range(1..8)).min(bytes.len()))),
            _ => bytes.truncate(at),
        }
        if bytes != genuine {
            return bytes;
        }
    }
}

#[tokio::test]
async fn a_thousand_mutated_chunk_requests_are_refused_or_answered_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ArtifactStore::open(dir.path()).unwrap());
    let blob: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let id = store.put(&blob).unwrap();
    let handler = serve(store.clone());
    let genuine = ChunkRequest::new(id, 0, 1 << 20).encode();
    let mut rng = ChaCha8Rng::seed_from_u64(0xa27);
    let (mut refused, mut not_found, mut served) = (0, 0, 0);
    for _ in 0..1000 {
        let mutated = mutate(&mut rng, &genuine);
        let reply = handler.handle(NodeId([2; 32]), Bytes::from(mutated.clone())).await.expect("always answers");
        match decode_reply(reply).expect("the server's replies decode") {
            (ChunkReply::Error { .. }, _) => refused += 1,
            (ChunkReply::NotFound, _) => not_found += 1,
            (ChunkReply::Chunk { total_size }, bytes) => {
                // Only a request that decodes can be served, and it gets the store's bytes.
                let request = ChunkRequest::decode(&mutated).expect("a served request decodes");
                assert_eq!(total_size, blob.len() as u64);
                let start = usize::try_from(request.offset).unwrap();
                assert_eq!(&bytes[..], &blob[start..start + bytes.len()]);
                served += 1;
            }
        }
    }
    eprintln!("chunk requests: {refused} refused, {not_found} for blobs not here, {served} answered from the store");
    assert_eq!(refused + not_found + served, 1000);
    // Most mutations land in the 32-byte id: a request for a blob this node does not have.
    assert!(refused + not_found >= 900, "{served} mutated requests were served");
}

/// A transport whose replies are mutated: the first reply of every fetch (the request that
/// asks for offset 0).
struct Tampering {
    inner: Arc<dyn Transport>,
    rng: Mutex<ChaCha8Rng>,
}

impl Transport for Tampering {
    fn local_id(&self) -> NodeId {
        self.inner.local_id()
    }

    fn set_peer_addr(&self, node: NodeId, addr: std::net::SocketAddr) {
        self.inner.set_peer_addr(node, addr);
    }

    fn request(
        &self,
        to: NodeId,
        protocol: Protocol,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let first = ChunkRequest::decode(&body).is_ok_and(|r| r.offset == 0);
        let reply = self.inner.request(to, protocol, body);
        let seed: u64 = self.rng.lock().unwrap().r#gen();
        Box::pin(async move {
            let reply = reply.await?;
            if !first {
                return Ok(reply);
            }
            Ok(Bytes::from(mutate(&mut ChaCha8Rng::seed_from_u64(seed), &reply)))
        })
    }

    fn serve(&self, protocol: Protocol, handler: Arc<dyn Handler>) {
        self.inner.serve(protocol, handler);
    }
}

#[tokio::test]
async fn a_thousand_mutated_chunk_replies_never_store_altered_content() {
    let network = MemoryNetwork::new();
    let (server_id, client_id) = (NodeId([1; 32]), NodeId([2; 32]));
    let server_dir = tempfile::tempdir().unwrap();
    let server_store = Arc::new(ArtifactStore::open(server_dir.path()).unwrap());
    let blob: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let id = server_store.put(&blob).unwrap();
    network.transport(server_id).serve(Protocol::Artifact, Arc::new(serve(server_store)));
    let transport: Arc<dyn Transport> = Arc::new(Tampering {
        inner: network.transport(client_id),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(0xfe7c4)),
    });
    let (mut refused, mut intact) = (0, 0);
    for _ in 0..1000 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::open(dir.path()).unwrap());
        let fetcher = Fetcher::new(transport.clone(), store.clone());
        match fetcher.fetch(id, &[server_id]).await {
            Ok(path) => {
                // Accepted only when the bytes that ended up stored are the genuine ones (a
                // reply cut short is completed by the next, genuine, chunk).
                assert_eq!(std::fs::read(path).unwrap(), blob, "altered content was stored");
                intact += 1;
            }
            Err(_) => {
                assert!(!store.contains(id), "a failed fetch left a blob behind");
                refused += 1;
            }
        }
    }
    eprintln!("chunk replies: {refused} refused, {intact} fetches completed with the genuine bytes");
    assert_eq!(refused + intact, 1000);
    assert!(refused > 500);
}
