//! Node-to-node transport.
//!
//! Every node-to-node protocol (raft, node RPC, artifacts, events) is a request/response
//! exchange of opaque bytes addressed to a [`NodeId`] and tagged with a [`Protocol`]. The real
//! implementation is QUIC with mutual TLS, one ALPN per protocol; tests and the seeded
//! simulation use an in-memory network with cuttable links. Both sit behind [`Transport`].
//!
//! **Invariant:** a request is delivered only to the node whose id it is addressed to, and the
//! handler learns the authenticated id of the sender.
//!
//! **Invariant:** a node that [`Admission`] does not admit gets no request served: the QUIC
//! transport closes its connections and [`memory::MemoryTransport`] answers
//! [`TransportError::Refused`].
//!
//! Modules: [`pki`] (node keys, the mesh CA, node certificates), [`quic`] (the real transport),
//! [`memory`] (the in-memory network; always compiled because other crates' simulation tests use
//! it, and it costs no dependencies). `docs/design/transport.md` describes the protocol.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use falak_core::NodeId;

pub mod https;
pub mod memory;
pub mod pki;
pub mod quic;

pub use memory::{MemoryConfig, MemoryNetwork, MemoryTransport};
pub use pki::{MeshCa, MeshRoot, MeshSecret, NodeCert, NodeKey, node_id_from_cert};
pub use quic::{BindError, QuicConfig, QuicTransport};

/// One protocol per ALPN on the node endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Raft messages and writes forwarded to the leader.
    Ledger,
    /// Node RPC: logs, joins, invoke proxy.
    Rpc,
    /// Artifact transfer by content id.
    Artifact,
    /// Event mesh.
    Events,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Protocol::Ledger, Protocol::Rpc, Protocol::Artifact, Protocol::Events];

    /// The ALPN identifier negotiated on the QUIC endpoint.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Protocol::Ledger => b"falak/ledger/1",
            Protocol::Rpc => b"falak/rpc/1",
            Protocol::Artifact => b"falak/artifact/1",
            Protocol::Events => b"falak/events/1",
        }
    }

    pub fn from_alpn(alpn: &[u8]) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.alpn() == alpn)
    }
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    #[error("no address known for node {0}")]
    UnknownPeer(String),
    #[error("node {node} unreachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("request to node {0} timed out")]
    Timeout(String),
    #[error("node {node} refused the request: {reason}")]
    Refused { node: String, reason: String },
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the handler failed: {0}")]
    Handler(String),
    #[error("transport is shut down")]
    Closed,
}

/// Serves requests arriving for one protocol. The `from` id is authenticated by the transport.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
}

impl<F> Handler for F
where
    F: Fn(NodeId, Bytes) -> BoxFuture<'static, Result<Bytes, String>> + Send + Sync + 'static,
{
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        self(from, body)
    }
}

/// Decides which nodes may talk to this one, per protocol. The ledger owns the answer (admitted
/// and not revoked); the transport asks on every incoming connection and every request.
///
/// It is called on network tasks, so it must answer quickly and never block on IO.
pub trait Admission: Send + Sync + 'static {
    fn admits(&self, node: &NodeId, protocol: Protocol) -> bool;
}

impl<F> Admission for F
where
    F: Fn(&NodeId, Protocol) -> bool + Send + Sync + 'static,
{
    fn admits(&self, node: &NodeId, protocol: Protocol) -> bool {
        self(node, protocol)
    }
}

/// Admits every node holding a certificate from the mesh CA (tests, and a node's own bootstrap).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admits(&self, _node: &NodeId, _protocol: Protocol) -> bool {
        true
    }
}

/// A shared set of admitted node ids, for every protocol. A poisoned lock still answers: every
/// write is a single insert, remove or extend, so its last written value is consistent.
impl Admission for RwLock<BTreeSet<NodeId>> {
    fn admits(&self, node: &NodeId, _protocol: Protocol) -> bool {
        self.read().unwrap_or_else(PoisonError::into_inner).contains(node)
    }
}

impl Admission for RwLock<HashSet<NodeId>> {
    fn admits(&self, node: &NodeId, _protocol: Protocol) -> bool {
        self.read().unwrap_or_else(PoisonError::into_inner).contains(node)
    }
}

/// Sends requests to peers and dispatches incoming ones to registered handlers.
pub trait Transport: Send + Sync + 'static {
    /// This node's id.
    fn local_id(&self) -> NodeId;

    /// Record or update where `node` can be reached.
    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr);

    /// Send one request and wait for its response.
    fn request(&self, to: NodeId, protocol: Protocol, body: Bytes)
    -> BoxFuture<'static, Result<Bytes, TransportError>>;

    /// Register the handler for one protocol, replacing any earlier one.
    fn serve(&self, protocol: Protocol, handler: Arc<dyn Handler>);
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.alpn()).unwrap_or("?"))
    }
}
