//! The real transport: QUIC (quinn) with mutual TLS 1.3 against the mesh CA.
//!
//! One UDP endpoint per node, both server and client. Each (peer, protocol) pair gets one
//! connection, negotiated by ALPN and reused for every request; each request is one
//! bidirectional stream ([`wire`] frames it). A connection that died is replaced on the next
//! request. `docs/design/transport.md` lists what happens on each fault.

mod server;
mod tls;
mod wire;

/// The request/reply framing decoded from memory, for the fuzz targets (`fuzz/`) and tests; the
/// transport itself reads frames from QUIC streams with the same checks.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::wire::in_memory::*;
}

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectError, Connection, ConnectionError, Endpoint, EndpointConfig, VarInt, WriteError};

use crate::pki::{MESH_SERVER_NAME, MeshRoot, NodeCert, NodeKey};
use crate::{Admission, Handler, NodeId, Protocol, Transport, TransportError};
use server::Shared;
use wire::{ReadFrameError, Reply};

/// Connection close codes, seen by the peer as the application error code.
pub(crate) const CLOSE_SHUTDOWN: u32 = 0;
pub(crate) const CLOSE_REFUSED: u32 = 1;
pub(crate) const CLOSE_PROTOCOL: u32 = 2;
/// Stream stop code: the request is larger than this node accepts.
pub(crate) const STOP_TOO_LARGE: u32 = 1;

/// First guess at a peer's round-trip time, before any has been measured.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Tuning of a [`QuicTransport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// The UDP address to bind; port 0 picks a free one (see [`QuicTransport::local_addr`]).
    pub bind: SocketAddr,
    /// Bound on one request: connecting, sending and waiting for the reply. Short, because raft
    /// heartbeats need a dead peer to fail fast.
    pub request_timeout: Duration,
    /// Largest request or reply body, in either direction; at most `u32::MAX`.
    pub max_message_bytes: usize,
    /// A connection that hears nothing from its peer for this long is dead.
    pub idle_timeout: Duration,
    /// How often an otherwise quiet connection proves it is alive; well below `idle_timeout`.
    pub keep_alive_interval: Duration,
    /// Requests one peer may have in flight on one connection; more wait for a free slot.
    pub max_concurrent_requests: u32,
}

impl QuicConfig {
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(500);

    /// Defaults: 5 s requests, 16 MiB messages, a dead peer noticed within 2 s.
    pub fn new(bind: SocketAddr) -> QuicConfig {
        QuicConfig {
            bind,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            keep_alive_interval: Self::DEFAULT_KEEP_ALIVE,
            max_concurrent_requests: 128,
        }
    }

    fn transport_config(&self) -> Result<quinn::TransportConfig, BindError> {
        let invalid = |what: &str| BindError::InvalidConfig(what.to_owned());
        if self.max_message_bytes == 0 || self.max_message_bytes > u32::MAX as usize {
            return Err(invalid("max_message_bytes must be between 1 and u32::MAX"));
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(invalid("keep_alive_interval must be non-zero and below idle_timeout"));
        }
        if self.request_timeout.is_zero() || self.max_concurrent_requests == 0 {
            return Err(invalid("request_timeout and max_concurrent_requests must be non-zero"));
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| invalid("idle_timeout is too long"))?;
        let mut config = quinn::TransportConfig::default();
        config
            // QUIC waits at least three probe timeouts before giving a connection up; with the
            // default 333 ms first guess at the RTT that is 3 s, longer than `idle_timeout`. Mesh
            // peers are mostly near, and the estimate adapts after the first reply.
            .initial_rtt(INITIAL_RTT)
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_requests))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        Ok(config)
    }
}

/// Why a [`QuicTransport`] could not start. Nothing was bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the node certificate is for node {cert}, but the node key is node {key}")]
    CertMismatch { cert: NodeId, key: NodeId },
    #[error("invalid transport config: {0}")]
    InvalidConfig(String),
    #[error("setting up tls failed: {0}")]
    Tls(String),
    #[error("binding udp {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// A node's QUIC endpoint. Cheap to clone; every clone is the same endpoint. Dropping the last
/// clone closes it.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

struct Inner {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    tls: tls::TlsContext,
    transport_config: Arc<quinn::TransportConfig>,
    peers: Mutex<HashMap<NodeId, SocketAddr>>,
    /// One slot per (peer, protocol); its async lock makes concurrent requests share one dial.
    outgoing: Mutex<HashMap<(NodeId, Protocol), Slot>>,
    closed: AtomicBool,
    accept_task: tokio::task::JoinHandle<()>,
}

impl QuicTransport {
    /// Bind the endpoint and start serving. `cert` must be `key`'s certificate from the CA whose
    /// root is `root`; peers are trusted only if their certificates chain to `root`, and served
    /// only if `admission` admits them. Must be called inside a tokio runtime.
    pub fn bind(
        key: &NodeKey,
        cert: &NodeCert,
        root: &MeshRoot,
        config: QuicConfig,
        admission: Arc<dyn Admission>,
    ) -> Result<QuicTransport, BindError> {
        if cert.node_id() != key.id() {
            return Err(BindError::CertMismatch { cert: cert.node_id(), key: key.id() });
        }
        let transport_config = Arc::new(config.transport_config()?);
        let tls = tls::TlsContext::new(key, cert, root).map_err(|e| BindError::Tls(e.to_string()))?;
        let server_tls = tls.server_config().map_err(|e| BindError::Tls(e.to_string()))?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server_tls))
            .map_err(|e| BindError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());
        let mut endpoint_config = EndpointConfig::new(Arc::new(ResetKey::derive(key)));
        let cid_key = cid_key(key);
        endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let socket =
            std::net::UdpSocket::bind(config.bind).map_err(|source| BindError::Io { addr: config.bind, source })?;
        let endpoint = Endpoint::new(endpoint_config, Some(server_config), socket, Arc::new(quinn::TokioRuntime))
            .map_err(|source| BindError::Io { addr: config.bind, source })?;
        let shared = Arc::new(Shared::new(key.id(), config, admission));
        let accept_task = tokio::spawn(server::accept_loop(endpoint.clone(), shared.clone()));
        let inner = Inner {
            shared,
            endpoint,
            tls,
            transport_config,
            peers: Mutex::default(),
            outgoing: Mutex::default(),
            closed: AtomicBool::new(false),
            accept_task,
        };
        Ok(QuicTransport { inner: Arc::new(inner) })
    }

    /// The bound UDP address (the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Replace the admission policy and close connections of peers it no longer admits.
    pub fn set_admission(&self, admission: Arc<dyn Admission>) {
        *self.inner.shared.admission.write().unwrap_or_else(PoisonError::into_inner) = admission;
        self.recheck_admission();
    }

    /// Close connections, incoming and outgoing (but the ledger's outgoing ones, see
    /// `Inner::request`), whose peer the policy no longer admits (call after a node is revoked).
    /// Requests are checked one by one anyway, both ways; this only ends open connections early.
    pub fn recheck_admission(&self) {
        self.inner.shared.close_unadmitted();
        let slots: Vec<_> =
            lock(&self.inner.outgoing).iter().map(|((peer, p), slot)| (*peer, *p, slot.clone())).collect();
        for (peer, protocol, slot) in slots {
            if protocol != Protocol::Ledger
                && !self.inner.shared.admits(&peer, protocol)
                && let Ok(mut guard) = slot.try_lock()
                && let Some(conn) = guard.take()
            {
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"peer no longer admitted");
            }
        }
    }

    /// Smoothed round-trip time to `peer` over any live connection, if there is one.
    pub fn rtt(&self, peer: NodeId) -> Option<Duration> {
        self.rtts().into_iter().find(|(id, _)| *id == peer).map(|(_, rtt)| rtt)
    }

    /// The smallest smoothed round-trip time to each peer with a live connection.
    pub fn rtts(&self) -> Vec<(NodeId, Duration)> {
        let mut best: HashMap<NodeId, Duration> = HashMap::new();
        let mut note = |peer: NodeId, conn: &Connection| {
            if conn.close_reason().is_none() {
                let rtt = conn.rtt();
                best.entry(peer).and_modify(|b| *b = (*b).min(rtt)).or_insert(rtt);
            }
        };
        let slots: Vec<_> = lock(&self.inner.outgoing).iter().map(|((peer, _), slot)| (*peer, slot.clone())).collect();
        for (peer, slot) in slots {
            // A slot busy dialling has no connection worth measuring yet.
            if let Ok(guard) = slot.try_lock()
                && let Some(conn) = guard.as_ref()
            {
                note(peer, conn);
            }
        }
        for (peer, conn) in self.inner.shared.incoming_connections() {
            note(peer, &conn);
        }
        let mut out: Vec<_> = best.into_iter().collect();
        out.sort();
        out
    }

    /// Close every connection and stop serving, then wait (up to one second) for the peers to
    /// hear it. Requests afterwards fail with [`TransportError::Closed`].
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        self.inner.accept_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Transport for QuicTransport {
    fn local_id(&self) -> NodeId {
        self.inner.shared.local_id
    }

    fn set_peer_addr(&self, node: NodeId, addr: SocketAddr) {
        // A changed address takes effect on the next request: the cached connection no longer
        // matches and is replaced.
        lock(&self.inner.peers).insert(node, addr);
    }

    fn request(
        &self,
        to: NodeId,
        protocol: Protocol,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let timeout = inner.shared.config.request_timeout;
            match tokio::time::timeout(timeout, inner.request(to, protocol, body)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(to.short())),
            }
        })
    }

    fn serve(&self, protocol: Protocol, handler: Arc<dyn Handler>) {
        self.inner.shared.handlers.write().unwrap_or_else(PoisonError::into_inner).insert(protocol, handler);
    }
}

/// How one exchange on a connection failed.
enum ExchangeError {
    /// The connection is gone; the error says why.
    Lost(ConnectionError),
    /// The reply was larger than this node accepts.
    TooLarge { size: u64, limit: u64 },
    /// The stream broke while the connection lived (a bad frame, a reset stream).
    Stream(String),
}

impl Inner {
    async fn request(&self, to: NodeId, protocol: Protocol, body: Bytes) -> Result<Bytes, TransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(TransportError::Closed);
        }
        // Both ways: a node this one does not admit (never admitted, or revoked) is not sent
        // requests either, so a revoked node gets no more work from here. Except the ledger's:
        // raft's own membership decides whom it replicates to, and a revoked voter must still
        // count until the membership change that removes it commits, or a small mesh could be
        // left without a quorum.
        if protocol != Protocol::Ledger && !self.shared.admits(&to, protocol) {
            return Err(TransportError::Refused {
                node: to.short(),
                reason: format!("this node does not admit {} for {protocol} (not admitted, or revoked)", to.short()),
            });
        }
        let limit = self.shared.config.max_message_bytes;
        if body.len() > limit {
            return Err(TransportError::TooLarge { size: body.len(), limit });
        }
        let addr = lock(&self.peers).get(&to).copied().ok_or_else(|| TransportError::UnknownPeer(to.short()))?;
        let mut retried = false;
        loop {
            let (conn, fresh) = self.connection(to, protocol, addr).await?;
            match exchange(&conn, body.clone(), limit).await {
                Ok(reply) => return reply_result(to, reply),
                // A reused connection can turn out to be dead only now: the peer restarted or
                // shut it down while it sat idle. The request reached no live handler on it,
                // so one retry on a fresh connection is what the caller would do anyway.
                Err(ExchangeError::Lost(e)) if !fresh && !retried && worth_retrying(&e) => retried = true,
                Err(ExchangeError::Lost(e)) => return Err(self.lost_error(to, e)),
                Err(ExchangeError::TooLarge { size, limit }) => {
                    return Err(TransportError::TooLarge { size: size as usize, limit: limit as usize });
                }
                Err(ExchangeError::Stream(reason)) => {
                    return Err(TransportError::Unreachable { node: to.short(), reason });
                }
            }
        }
    }

    /// The live connection to `to` for `protocol`, dialling one if needed; `true` if new.
    async fn connection(
        &self,
        to: NodeId,
        protocol: Protocol,
        addr: SocketAddr,
    ) -> Result<(Connection, bool), TransportError> {
        let slot = lock(&self.outgoing).entry((to, protocol)).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() && conn.remote_address() == addr {
                return Ok((conn.clone(), false));
            }
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"replaced");
        }
        *guard = None;
        let conn = self.dial(to, protocol, addr).await?;
        *guard = Some(conn.clone());
        Ok((conn, true))
    }

    async fn dial(&self, to: NodeId, protocol: Protocol, addr: SocketAddr) -> Result<Connection, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable { node: to.short(), reason };
        let tls = self.tls.client_config(to, protocol).map_err(|e| unreachable(format!("tls setup failed: {e}")))?;
        let crypto =
            QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| unreachable(format!("tls setup failed: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport_config.clone());
        let connecting = self.endpoint.connect_with(config, addr, MESH_SERVER_NAME).map_err(|e| match e {
            ConnectError::EndpointStopping => TransportError::Closed,
            other => unreachable(format!("cannot connect to {addr}: {other}")),
        })?;
        connecting.await.map_err(|e| self.lost_error(to, e))
    }

    fn lost_error(&self, to: NodeId, e: ConnectionError) -> TransportError {
        let node = to.short();
        match e {
            ConnectionError::ApplicationClosed(close) if close.error_code == VarInt::from_u32(CLOSE_REFUSED) => {
                TransportError::Refused { node, reason: String::from_utf8_lossy(&close.reason).into_owned() }
            }
            ConnectionError::ConnectionClosed(close) if is_tls_alert(close.error_code) => {
                TransportError::Refused { node, reason: format!("peer rejected the tls handshake: {close}") }
            }
            ConnectionError::TransportError(error) if is_tls_alert(error.code) => {
                TransportError::Refused { node, reason: format!("tls handshake failed: {error}") }
            }
            ConnectionError::LocallyClosed if self.closed.load(Ordering::SeqCst) => TransportError::Closed,
            other => TransportError::Unreachable { node, reason: other.to_string() },
        }
    }
}

/// One request on its own stream of `conn`.
async fn exchange(conn: &Connection, body: Bytes, limit: usize) -> Result<Reply, ExchangeError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(ExchangeError::Lost)?;
    match wire::write_request(&mut send, body).await {
        Ok(()) => {
            let _ = send.finish();
        }
        // The server stops reading a request it refuses early; its reply still follows.
        Err(WriteError::Stopped(_)) => {}
        Err(WriteError::ConnectionLost(e)) => return Err(ExchangeError::Lost(e)),
        Err(other) => return Err(ExchangeError::Stream(format!("sending the request failed: {other}"))),
    }
    match wire::read_reply(&mut recv, limit).await {
        Ok(reply) => Ok(reply),
        Err(ReadFrameError::Stream(quinn::ReadError::ConnectionLost(e))) => Err(ExchangeError::Lost(e)),
        Err(ReadFrameError::TooLarge { size, limit }) => Err(ExchangeError::TooLarge { size, limit }),
        Err(other) => Err(ExchangeError::Stream(format!("bad reply: {other}"))),
    }
}

fn reply_result(to: NodeId, reply: Reply) -> Result<Bytes, TransportError> {
    match reply {
        Reply::Ok(body) => Ok(body),
        Reply::Handler(message) => Err(TransportError::Handler(message)),
        Reply::Refused(reason) => Err(TransportError::Refused { node: to.short(), reason }),
        Reply::TooLarge { size, limit } => Err(TransportError::TooLarge { size: size as usize, limit: limit as usize }),
    }
}

/// Failures of a reused connection that a fresh one will not share: the peer restarted (reset)
/// or shut the old connection down. A timed-out connection is not among them: the peer has
/// been silent for the whole idle timeout, and dialling it again would double the wait.
fn worth_retrying(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::Reset => true,
        ConnectionError::ApplicationClosed(close) => close.error_code == VarInt::from_u32(CLOSE_SHUTDOWN),
        _ => false,
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff (RFC 9001, 4.8).
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key behind QUIC stateless resets, derived from the node key so that a restarted node
/// can reset its peers' connections to its previous life at once, instead of leaving them to
/// time out. Secret, because a reset token lets its holder kill the connection.
struct ResetKey([u8; 32]);

impl ResetKey {
    fn derive(key: &NodeKey) -> ResetKey {
        ResetKey(blake3::derive_key("falak transport stateless reset key v1", key.pkcs8_der()))
    }
}

/// The key that signs this node's connection ids, also derived from the node key: a restarted
/// node must recognise its previous life's ids as its own to answer them with a reset (it
/// ignores packets for ids it did not sign).
fn cid_key(key: &NodeKey) -> u64 {
    let derived = blake3::derive_key("falak transport connection id key v1", key.pkcs8_der());
    u64::from_le_bytes([derived[0], derived[1], derived[2], derived[3], derived[4], derived[5], derived[6], derived[7]])
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let signature = <[u8; 32]>::try_from(signature).map_err(|_| quinn::crypto::CryptoError)?;
        // `blake3::Hash` equality runs in constant time.
        if blake3::keyed_hash(&self.0, data) == blake3::Hash::from_bytes(signature) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        self.accept_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::pki::MeshCa;
    use crate::{AdmitAll, Transport};

    fn transport(ca: &MeshCa) -> QuicTransport {
        let key = NodeKey::generate().unwrap();
        let cert = ca.issue(key.id(), "n", UNIX_EPOCH + Duration::from_secs(1_750_000_000)).unwrap();
        let config = QuicConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        QuicTransport::bind(&key, &cert, &ca.root(), config, Arc::new(AdmitAll)).unwrap()
    }

    /// Send raw bytes as a request on a fresh stream and return what comes back.
    async fn raw(conn: &Connection, bytes: &'static [u8]) -> Result<Reply, ReadFrameError> {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        wire::read_reply(&mut recv, 1 << 20).await
    }

    #[tokio::test]
    async fn malformed_requests_are_answered_or_dropped_and_the_server_keeps_serving() {
        let ca = MeshCa::generate("test", UNIX_EPOCH + Duration::from_secs(1_750_000_000)).unwrap();
        let (a, b) = (transport(&ca), transport(&ca));
        a.serve(
            Protocol::Rpc,
            Arc::new(|_: NodeId, body: Bytes| -> BoxFuture<'static, Result<Bytes, String>> {
                Box::pin(async move { Ok(body) })
            }),
        );
        let a_id = a.local_id();
        let (conn, _) = b.inner.connection(a_id, Protocol::Rpc, a.local_addr().unwrap()).await.unwrap();

        // A length the server will not accept: refused by the header, never allocated.
        let reply = raw(&conn, &[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert_eq!(
            reply,
            Reply::TooLarge { size: u32::MAX as u64, limit: QuicConfig::DEFAULT_MAX_MESSAGE_BYTES as u64 }
        );
        // A body shorter than announced, and a header cut short: the stream is dropped unanswered.
        assert!(matches!(raw(&conn, &[0, 0, 0, 10, 1, 2, 3]).await, Err(ReadFrameError::Truncated)));
        assert!(matches!(raw(&conn, &[0, 0]).await, Err(ReadFrameError::Truncated)));
        // The connection and the server are fine.
        b.set_peer_addr(a_id, a.local_addr().unwrap());
        assert_eq!(b.request(a_id, Protocol::Rpc, Bytes::from_static(b"ok")).await.unwrap(), "ok");
    }
}
