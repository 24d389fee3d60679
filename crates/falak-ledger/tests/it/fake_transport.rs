//! A test-only in-memory [`Transport`] with crashable nodes and cuttable links.
//!
//! Stand-in until `falak_transport`'s `MemoryNetwork` lands; named as a fake so nobody mistakes
//! it for the real one. Requests run the receiver's handler directly in the caller's task.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use falak_ledger::NodeId;
use falak_transport::{Handler, Protocol, Transport, TransportError};
use futures_util::future::BoxFuture;

#[derive(Default)]
struct NetState {
    handlers: HashMap<(NodeId, Protocol), Arc<dyn Handler>>,
    crashed: HashSet<NodeId>,
    cut: HashSet<(NodeId, NodeId)>,
}

/// The wires between fake transports.
#[derive(Default)]
pub struct FakeNetwork {
    state: Mutex<NetState>,
}

impl FakeNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeNetwork::default())
    }

    fn with<R>(&self, f: impl FnOnce(&mut NetState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn transport(self: &Arc<Self>, id: NodeId) -> Arc<FakeTransport> {
        Arc::new(FakeTransport { id, net: self.clone() })
    }

    /// The node stops answering and sending, and forgets its handlers (as a killed process).
    pub fn crash(&self, id: NodeId) {
        self.with(|s| {
            s.crashed.insert(id);
            s.handlers.retain(|(node, _), _| *node != id);
        });
    }

    /// The node's process is back (its handlers must be registered again).
    pub fn revive(&self, id: NodeId) {
        self.with(|s| s.crashed.remove(&id));
    }

    /// Cut the link between `a` and `b` in both directions.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.with(|s| {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        });
    }

    pub fn heal_all(&self) {
        self.with(|s| s.cut.clear());
    }
}

/// One node's end of a [`FakeNetwork`].
pub struct FakeTransport {
    id: NodeId,
    net: Arc<FakeNetwork>,
}

impl Transport for FakeTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn set_peer_addr(&self, _node: NodeId, _addr: SocketAddr) {}

    fn request(
        &self,
        to: NodeId,
        protocol: Protocol,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let from = self.id;
        let handler = self.net.with(|s| {
            if s.crashed.contains(&from) {
                return Err(TransportError::Closed);
            }
            if s.crashed.contains(&to) || s.cut.contains(&(from, to)) {
                return Err(TransportError::Unreachable { node: to.short(), reason: "fake link down".into() });
            }
            s.handlers.get(&(to, protocol)).cloned().ok_or_else(|| TransportError::Refused {
                node: to.short(),
                reason: format!("no handler for {protocol}"),
            })
        });
        Box::pin(async move { handler?.handle(from, body).await.map_err(TransportError::Handler) })
    }

    fn serve(&self, protocol: Protocol, handler: Arc<dyn Handler>) {
        self.net.with(|s| s.handlers.insert((self.id, protocol), handler));
    }
}
