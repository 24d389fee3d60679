//! Raft's outgoing RPCs over the node transport (openraft's `RaftNetworkFactory`/`RaftNetwork`).
//!
//! Transport failures map onto openraft's retry classes: a peer that cannot be reached at all
//! is `Unreachable`, so openraft backs off (see [`PeerClient::backoff`]) instead of hammering a
//! dead node; a request that reached the peer but failed or timed out is a `NetworkError`,
//! retried on the next heartbeat; a message over the transport limit is `PayloadTooLarge`, so
//! openraft resends fewer entries.
//!
//! Snapshots use openraft's built-in chunking (`snapshot_chunk_bytes` per message); the chunk
//! bytes ride in the frame's binary tail.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use falak_core::NodeId;
use falak_transport::{Protocol, Transport, TransportError};
use openraft::error::{
    Infallible, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;

use crate::wire::{self, LedgerRequest, SnapshotChunk};
use crate::{PeerInfo, TypeConfig};

type RpcResult<T, E> = Result<T, RPCError<NodeId, PeerInfo, RaftError<NodeId, E>>>;

/// When each peer last answered one of this node's raft RPCs (any answer: the peer is
/// connected and its ledger serving). tokio's clock, so a paused test runtime drives it.
#[derive(Clone, Default)]
pub(crate) struct Answered(Arc<Mutex<HashMap<NodeId, tokio::time::Instant>>>);

impl Answered {
    fn note(&self, peer: NodeId) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(peer, tokio::time::Instant::now());
    }

    /// The peers that answered within `within`.
    pub(crate) fn within(&self, within: Duration) -> BTreeSet<NodeId> {
        let now = tokio::time::Instant::now();
        let answered = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        answered.iter().filter(|(_, at)| now.saturating_duration_since(**at) <= within).map(|(id, _)| *id).collect()
    }
}

/// Creates one [`PeerClient`] per replication or vote target.
pub(crate) struct LedgerNetwork {
    transport: Arc<dyn Transport>,
    answered: Answered,
}

impl LedgerNetwork {
    pub(crate) fn new(transport: Arc<dyn Transport>, answered: Answered) -> Self {
        LedgerNetwork { transport, answered }
    }
}

impl RaftNetworkFactory<TypeConfig> for LedgerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerInfo) -> PeerClient {
        // The membership carries each member's address; hand it to the transport so a new
        // learner or voter is reachable even before gossip has told the node about it. An
        // address that is not `ip:port` is left to the node's own discovery.
        if let Ok(addr) = node.addr.parse::<SocketAddr>() {
            self.transport.set_peer_addr(target, addr);
        }
        PeerClient { target, transport: self.transport.clone(), answered: self.answered.clone() }
    }
}

/// Sends raft RPCs to one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    transport: Arc<dyn Transport>,
    answered: Answered,
}

impl PeerClient {
    /// Send one request and decode the peer's `Result<T, RaftError<E>>`.
    async fn call<T, E>(&self, request: &LedgerRequest, tail: &[u8], entries: usize) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let frame = wire::encode(request, tail).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .transport
            .request(self.target, Protocol::Ledger, frame)
            .await
            .map_err(|e| transport_error(e, entries))?;
        self.answered.note(self.target);
        let (result, _): (Result<T, RaftError<NodeId, E>>, Bytes) =
            wire::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Map a transport failure onto openraft's retry classes (see the module doc).
fn transport_error<E: std::error::Error>(err: TransportError, entries: usize) -> RPCError<NodeId, PeerInfo, E> {
    match err {
        TransportError::UnknownPeer(_)
        | TransportError::Unreachable { .. }
        | TransportError::Refused { .. }
        | TransportError::Closed => RPCError::Unreachable(Unreachable::new(&err)),
        TransportError::TooLarge { .. } if entries > 1 => {
            RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
        }
        // A single entry (or a snapshot chunk) over the limit cannot be split further; back off
        // so the leader does not spin on it, and let the operator see the error in the logs.
        TransportError::TooLarge { .. } => RPCError::Unreachable(Unreachable::new(&err)),
        TransportError::Timeout(_) | TransportError::Handler(_) => RPCError::Network(NetworkError::new(&err)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, Infallible> {
        let entries = rpc.entries.len();
        self.call(&LedgerRequest::AppendEntries(rpc), &[], entries).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let chunk = SnapshotChunk { vote: rpc.vote, meta: rpc.meta, offset: rpc.offset, done: rpc.done };
        self.call(&LedgerRequest::InstallSnapshot(chunk), &rpc.data, 0).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, Infallible> {
        self.call(&LedgerRequest::Vote(rpc), &[], 0).await
    }

    /// Retry an unreachable peer after 100 ms, doubling up to 1 s: a restarted follower is
    /// picked up within a second, a dead one costs one attempt per second.
    fn backoff(&self) -> Backoff {
        let delays =
            (0..4u32).map(|i| Duration::from_millis(100 << i)).chain(std::iter::repeat(Duration::from_secs(1)));
        Backoff::new(delays)
    }
}
