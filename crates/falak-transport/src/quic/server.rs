//! The serving side of the endpoint: accept connections, check who they are from, and answer
//! each stream with the handler registered for the connection's protocol.
//!
//! Admission is checked once the handshake has authenticated the peer and again for every
//! request, so a node revoked while connected is refused from its next request on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use futures_util::FutureExt;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;

use super::wire::{self, ReadFrameError, Reply};
use super::{CLOSE_PROTOCOL, CLOSE_REFUSED, QuicConfig, STOP_TOO_LARGE};
use crate::pki::node_id_from_cert;
use crate::{Admission, Handler, NodeId, Protocol};

/// What the accept loop shares with the transport handle.
pub(crate) struct Shared {
    pub(crate) local_id: NodeId,
    pub(crate) config: QuicConfig,
    pub(crate) handlers: RwLock<HashMap<Protocol, Arc<dyn Handler>>>,
    pub(crate) admission: RwLock<Arc<dyn Admission>>,
    /// Live incoming connections by `Connection::stable_id`.
    incoming: Mutex<HashMap<usize, (NodeId, Protocol, Connection)>>,
}

impl Shared {
    pub(crate) fn new(local_id: NodeId, config: QuicConfig, admission: Arc<dyn Admission>) -> Shared {
        Shared {
            local_id,
            config,
            handlers: RwLock::default(),
            admission: RwLock::new(admission),
            incoming: Mutex::default(),
        }
    }

    /// A node always admits itself; everyone else is up to the policy.
    pub(crate) fn admits(&self, peer: &NodeId, protocol: Protocol) -> bool {
        *peer == self.local_id || self.admission.read().unwrap_or_else(PoisonError::into_inner).admits(peer, protocol)
    }

    pub(crate) fn incoming_connections(&self) -> Vec<(NodeId, Connection)> {
        lock(&self.incoming).values().map(|(peer, _, conn)| (*peer, conn.clone())).collect()
    }

    pub(crate) fn close_unadmitted(&self) {
        let live: Vec<_> = lock(&self.incoming).values().cloned().collect();
        for (peer, protocol, conn) in live {
            if !self.admits(&peer, protocol) {
                refuse(&conn, peer, protocol);
            }
        }
    }
}

/// Accept connections until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
}

async fn serve_connection(incoming: Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "incoming handshake failed");
            return;
        }
    };
    let Some((peer, protocol)) = identify(&conn) else {
        // The TLS config makes both certain; this guards against a quinn or rustls surprise.
        conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no node identity or protocol");
        return;
    };
    if !shared.admits(&peer, protocol) {
        tracing::debug!(%remote, peer = %peer.short(), %protocol, "refusing a node that is not admitted");
        refuse(&conn, peer, protocol);
        return;
    }
    let key = conn.stable_id();
    lock(&shared.incoming).insert(key, (peer, protocol, conn.clone()));
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(shared.clone(), conn.clone(), peer, protocol, send, recv));
    }
    lock(&shared.incoming).remove(&key);
}

async fn serve_stream(
    shared: Arc<Shared>,
    conn: Connection,
    peer: NodeId,
    protocol: Protocol,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let reply = match wire::read_request(&mut recv, shared.config.max_message_bytes).await {
        Ok(body) => respond(&shared, &conn, peer, protocol, body).await,
        Err(ReadFrameError::TooLarge { size, limit }) => {
            // Stop the sender now rather than read what will be refused.
            let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
            Reply::TooLarge { size, limit }
        }
        Err(e) => {
            tracing::debug!(peer = %peer.short(), %protocol, error = %e, "dropping a broken request");
            return;
        }
    };
    if wire::write_reply(&mut send, reply).await.is_ok() {
        let _ = send.finish();
    }
}

async fn respond(shared: &Shared, conn: &Connection, peer: NodeId, protocol: Protocol, body: Bytes) -> Reply {
    if !shared.admits(&peer, protocol) {
        refuse(conn, peer, protocol);
        return Reply::Refused(refusal(peer, protocol));
    }
    let handler = shared.handlers.read().unwrap_or_else(PoisonError::into_inner).get(&protocol).cloned();
    let Some(handler) = handler else {
        return Reply::Refused(format!("no handler serves {protocol} on this node"));
    };
    // A handler that panics fails its request, not the node.
    match AssertUnwindSafe(handler.handle(peer, body)).catch_unwind().await {
        Ok(Ok(out)) if out.len() > shared.config.max_message_bytes => {
            Reply::TooLarge { size: out.len() as u64, limit: shared.config.max_message_bytes as u64 }
        }
        Ok(Ok(out)) => Reply::Ok(out),
        Ok(Err(message)) => Reply::Handler(message),
        Err(_) => Reply::Handler(format!("the {protocol} handler panicked")),
    }
}

/// The authenticated node id and the negotiated protocol of a connection.
fn identify(conn: &Connection) -> Option<(NodeId, Protocol)> {
    let certs = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let peer = node_id_from_cert(certs.first()?).ok()?;
    let handshake = conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    let protocol = Protocol::from_alpn(handshake.protocol.as_deref()?)?;
    Some((peer, protocol))
}

fn refusal(peer: NodeId, protocol: Protocol) -> String {
    format!("node {} is not admitted for {protocol}", peer.short())
}

fn refuse(conn: &Connection, peer: NodeId, protocol: Protocol) {
    conn.close(VarInt::from_u32(CLOSE_REFUSED), refusal(peer, protocol).as_bytes());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
