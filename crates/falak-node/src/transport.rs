//! The node's transport: QUIC with mutual TLS in a real node, any [`Transport`] in tests. The
//! main loop tells it where admitted peers live and reads round-trip times for gossip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use falak_core::NodeId;
use falak_transport::{QuicTransport, Transport};

/// The transport as the main loop sees it.
#[derive(Clone)]
pub struct NodeTransport {
    transport: Arc<dyn Transport>,
    quic: Option<QuicTransport>,
}

impl NodeTransport {
    pub fn quic(quic: QuicTransport) -> NodeTransport {
        NodeTransport { transport: Arc::new(quic.clone()), quic: Some(quic) }
    }

    /// Any transport (the in-memory network in tests); no round-trip times.
    pub fn other(transport: Arc<dyn Transport>) -> NodeTransport {
        NodeTransport { transport, quic: None }
    }

    pub fn dyn_transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    pub fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        if node != self.transport.local_id() {
            self.transport.set_peer_addr(node, addr);
        }
    }

    /// Smoothed round-trip time to each connected peer.
    pub fn rtts(&self) -> Vec<(NodeId, Duration)> {
        self.quic.as_ref().map(QuicTransport::rtts).unwrap_or_default()
    }

    /// Re-run admission on open connections (after a node is admitted or removed).
    pub fn recheck_admission(&self) {
        if let Some(quic) = &self.quic {
            quic.recheck_admission();
        }
    }

    pub async fn shutdown(&self) {
        if let Some(quic) = &self.quic {
            quic.shutdown().await;
        }
    }
}
