//! Real QUIC between nodes on 127.0.0.1 (port 0 only).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use falak_transport::{
    Admission, AdmitAll, MeshCa, MeshRoot, NodeCert, NodeId, NodeKey, Protocol, QuicConfig, QuicTransport, Transport,
    TransportError,
};

use crate::{echo, failing, sized, slow};

/// Certificates are issued at a fixed time (mid-2025) and valid ten years, so the tests read no
/// clock; the TLS stack checks them against the real time.
fn issued_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn config(bind: SocketAddr) -> QuicConfig {
    QuicConfig {
        request_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(1),
        keep_alive_interval: Duration::from_millis(250),
        ..QuicConfig::new(bind)
    }
}

struct Node {
    key: NodeKey,
    cert: NodeCert,
    root: MeshRoot,
    transport: QuicTransport,
    calls: Arc<AtomicUsize>,
}

impl Node {
    fn id(&self) -> NodeId {
        self.key.id()
    }

    fn addr(&self) -> SocketAddr {
        self.transport.local_addr().unwrap()
    }

    /// Let `self` reach `other`.
    fn knows(&self, other: &Node) {
        self.transport.set_peer_addr(other.id(), other.addr());
    }

    async fn ask(&self, to: &Node, protocol: Protocol, body: &'static str) -> Result<Bytes, TransportError> {
        self.transport.request(to.id(), protocol, Bytes::from_static(body.as_bytes())).await
    }
}

/// A node with a certificate from `issuer`, trusting `root`, serving echo on every protocol.
fn node_with(issuer: &MeshCa, root: &MeshRoot, config: QuicConfig, admission: Arc<dyn Admission>) -> Node {
    let key = NodeKey::generate().unwrap();
    let cert = issuer.issue(key.id(), "n", issued_at()).unwrap();
    let transport = QuicTransport::bind(&key, &cert, root, config, admission).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for protocol in Protocol::ALL {
        transport.serve(protocol, echo(protocol, calls.clone()));
    }
    Node { key, cert, root: root.clone(), transport, calls }
}

fn node(ca: &MeshCa) -> Node {
    node_with(ca, &ca.root(), config(loopback()), Arc::new(AdmitAll))
}

fn mesh_ca() -> MeshCa {
    MeshCa::generate("test", issued_at()).unwrap()
}

fn assert_refused(result: Result<Bytes, TransportError>) -> String {
    match result {
        Err(TransportError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn two_nodes_exchange_requests_on_every_protocol() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    a.knows(&b);
    b.knows(&a);
    for protocol in Protocol::ALL {
        let reply = b.ask(&a, protocol, "ping").await.unwrap();
        assert_eq!(reply, format!("{protocol} {} ping", b.id().short()));
        let reply = a.ask(&b, protocol, "pong").await.unwrap();
        assert_eq!(reply, format!("{protocol} {} pong", a.id().short()));
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 4);
    assert!(b.transport.rtt(a.id()).is_some(), "rtt is known once connected");
    assert!(b.transport.rtts().iter().any(|(id, _)| *id == a.id()));
    assert_eq!(b.transport.local_id(), b.id());
}

#[tokio::test]
async fn concurrent_requests_share_one_connection_and_all_succeed() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    b.knows(&a);
    let requests: Vec<_> =
        (0..32).map(|_| b.transport.request(a.id(), Protocol::Rpc, Bytes::from_static(b"x"))).collect();
    for reply in futures_util::future::join_all(requests).await {
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 32);
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let ca = mesh_ca();
    let a = node(&ca);
    // The intruder trusts the mesh root but holds a certificate from its own CA: the mesh node
    // rejects its client certificate.
    let foreign = MeshCa::generate("foreign", issued_at()).unwrap();
    let intruder = node_with(&foreign, &ca.root(), config(loopback()), Arc::new(AdmitAll));
    intruder.knows(&a);
    let reason = assert_refused(intruder.ask(&a, Protocol::Rpc, "let me in").await);
    assert!(!reason.is_empty());
    assert_eq!(a.calls.load(Ordering::SeqCst), 0, "no handler ran for the intruder");

    // And a mesh node does not accept the foreign CA's server certificate.
    a.knows(&intruder);
    assert_refused(a.ask(&intruder, Protocol::Rpc, "who are you").await);
    assert_eq!(intruder.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_node_that_is_not_admitted_is_refused_until_it_is() {
    let ca = mesh_ca();
    let admitted = Arc::new(RwLock::new(BTreeSet::new()));
    let a = node_with(&ca, &ca.root(), config(loopback()), admitted.clone());
    let b = node(&ca);
    b.knows(&a);

    let reason = assert_refused(b.ask(&a, Protocol::Ledger, "vote for me").await);
    assert!(reason.contains("not admitted"), "{reason}");
    assert_eq!(a.calls.load(Ordering::SeqCst), 0);

    admitted.write().unwrap().insert(b.id());
    assert!(b.ask(&a, Protocol::Ledger, "vote for me").await.is_ok());

    // Revoked while connected: the next request on the same connection is refused.
    admitted.write().unwrap().remove(&b.id());
    let reason = assert_refused(b.ask(&a, Protocol::Ledger, "again").await);
    assert!(reason.contains("not admitted"), "{reason}");
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_node_that_is_not_admitted_is_not_sent_requests_either() {
    let ca = mesh_ca();
    let admitted = Arc::new(RwLock::new(BTreeSet::new()));
    let a = node_with(&ca, &ca.root(), config(loopback()), admitted.clone());
    let b = node(&ca);
    a.knows(&b);
    admitted.write().unwrap().insert(b.id());
    assert!(a.ask(&b, Protocol::Rpc, "logs").await.is_ok());
    // Revoked: A refuses to send it anything, on the open connection or a new one.
    admitted.write().unwrap().remove(&b.id());
    a.transport.recheck_admission();
    let reason = assert_refused(a.ask(&b, Protocol::Rpc, "logs").await);
    assert!(reason.contains("does not admit"), "{reason}");
    assert_eq!(b.calls.load(Ordering::SeqCst), 1, "B saw only the first request");
    // Except the ledger: raft membership decides whom it replicates to (a revoked voter must
    // still count until the change that removes it commits).
    assert!(a.ask(&b, Protocol::Ledger, "append").await.is_ok());
}

#[tokio::test]
async fn admission_can_be_per_protocol_and_replaced() {
    let ca = mesh_ca();
    let a = node(&ca);
    let b = node(&ca);
    b.knows(&a);
    // Joining nodes may reach the rpc protocol only.
    a.transport.set_admission(Arc::new(|_: &NodeId, protocol: Protocol| protocol == Protocol::Rpc));
    assert!(b.ask(&a, Protocol::Rpc, "join").await.is_ok());
    assert_refused(b.ask(&a, Protocol::Ledger, "append").await);
    a.transport.set_admission(Arc::new(AdmitAll));
    assert!(b.ask(&a, Protocol::Ledger, "append").await.is_ok());
}

#[tokio::test]
async fn a_certificate_whose_key_is_not_the_expected_node_is_refused() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    // B believes some other node lives at A's address; A's certificate names A, not it.
    let expected = NodeKey::generate().unwrap().id();
    b.transport.set_peer_addr(expected, a.addr());
    let reason = assert_refused(b.transport.request(expected, Protocol::Rpc, Bytes::from_static(b"hi")).await);
    assert!(reason.contains("expected node"), "{reason}");
    assert_eq!(a.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_that_does_not_match_the_key_cannot_bind() {
    let ca = mesh_ca();
    let key = NodeKey::generate().unwrap();
    let other = ca.issue(NodeKey::generate().unwrap().id(), "other", issued_at()).unwrap();
    let err = QuicTransport::bind(&key, &other, &ca.root(), config(loopback()), Arc::new(AdmitAll)).err().unwrap();
    assert!(matches!(err, falak_transport::BindError::CertMismatch { .. }), "{err}");
}

#[tokio::test]
async fn oversize_messages_fail_with_too_large() {
    let ca = mesh_ca();
    let small = QuicConfig { max_message_bytes: 1024, ..config(loopback()) };
    let a = node_with(&ca, &ca.root(), small.clone(), Arc::new(AdmitAll));
    let b = node(&ca);
    b.knows(&a);
    a.knows(&b);

    // Over the sender's own limit: refused before anything is sent.
    let big = Bytes::from(vec![1u8; 2048]);
    assert_eq!(
        a.transport.request(b.id(), Protocol::Artifact, big.clone()).await,
        Err(TransportError::TooLarge { size: 2048, limit: 1024 })
    );
    // Over the receiver's limit: it stops reading and says so.
    assert_eq!(
        b.transport.request(a.id(), Protocol::Artifact, big).await,
        Err(TransportError::TooLarge { size: 2048, limit: 1024 })
    );
    assert_eq!(a.calls.load(Ordering::SeqCst), 0);
    // A reply over the requester's limit.
    b.transport.serve(Protocol::Artifact, sized(4096));
    assert_eq!(
        a.transport.request(b.id(), Protocol::Artifact, Bytes::from_static(b"blob")).await,
        Err(TransportError::TooLarge { size: 4096, limit: 1024 })
    );
    // The connection survives all of it.
    assert!(b.ask(&a, Protocol::Rpc, "still there").await.is_ok());
}

#[tokio::test]
async fn handler_failures_and_missing_handlers_are_reported() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    b.knows(&a);
    a.transport.serve(Protocol::Rpc, failing("no such job"));
    assert_eq!(b.ask(&a, Protocol::Rpc, "x").await, Err(TransportError::Handler("no such job".into())));

    let c = QuicTransport::bind(&b.key, &b.cert, &b.root, config(loopback()), Arc::new(AdmitAll)).unwrap();
    a.knows(&b);
    a.transport.set_peer_addr(b.id(), c.local_addr().unwrap());
    let reason = assert_refused(a.ask(&b, Protocol::Events, "x").await);
    assert!(reason.contains("no handler"), "{reason}");
}

#[tokio::test]
async fn slow_handlers_time_out_and_unknown_peers_fail_fast() {
    let ca = mesh_ca();
    let a = node_with(&ca, &ca.root(), config(loopback()), Arc::new(AdmitAll));
    let b = node_with(
        &ca,
        &ca.root(),
        QuicConfig { request_timeout: Duration::from_millis(300), ..config(loopback()) },
        Arc::new(AdmitAll),
    );
    b.knows(&a);
    a.transport.serve(Protocol::Rpc, slow(Duration::from_secs(2), "late"));
    assert_eq!(b.ask(&a, Protocol::Rpc, "x").await, Err(TransportError::Timeout(a.id().short())));
    let stranger = NodeKey::generate().unwrap().id();
    assert_eq!(
        b.transport.request(stranger, Protocol::Rpc, Bytes::new()).await,
        Err(TransportError::UnknownPeer(stranger.short()))
    );
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again_on_the_same_address() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    b.knows(&a);
    assert!(b.ask(&a, Protocol::Ledger, "before").await.is_ok());

    let addr = a.addr();
    a.transport.shutdown().await;
    assert_eq!(a.ask(&b, Protocol::Rpc, "x").await, Err(TransportError::Closed));
    // The socket is released once the last handle of the endpoint is gone.
    let Node { key, cert, root, transport, .. } = a;
    drop(transport);

    // While it is down, requests fail instead of hanging.
    let start = tokio::time::Instant::now();
    let down = b.ask_id(key.id(), Protocol::Ledger).await;
    assert!(matches!(down, Err(TransportError::Unreachable { .. })), "{down:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "a dead peer is noticed within the idle timeout");

    let restarted = bind_retrying(&key, &cert, &root, addr).await;
    let calls = Arc::new(AtomicUsize::new(0));
    restarted.serve(Protocol::Ledger, echo(Protocol::Ledger, calls.clone()));
    let reply = b.ask_id(key.id(), Protocol::Ledger).await.unwrap();
    assert_eq!(reply, format!("{} {} after", Protocol::Ledger, b.id().short()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_peer_killed_without_closing_is_reached_once_it_restarts() {
    let ca = mesh_ca();
    let b = node(&ca);
    // The victim runs on a runtime of its own, so it can die as `kill -9` would: its tasks
    // vanish without sending a close, leaving B with a connection that looks alive.
    let victim_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let victim = {
        let _entered = victim_runtime.enter();
        node(&ca)
    };
    b.knows(&victim);
    assert!(b.ask(&victim, Protocol::Ledger, "before").await.is_ok());
    let addr = victim.addr();
    victim_runtime.shutdown_background();
    let Node { key, cert, root, transport, .. } = victim;
    drop(transport);

    let restarted = bind_retrying(&key, &cert, &root, addr).await;
    restarted.serve(Protocol::Ledger, echo(Protocol::Ledger, Arc::new(AtomicUsize::new(0))));
    // The restarted node derives the same stateless-reset key, so B's stale connection is
    // reset at once and the request retried on a new one, well inside the idle timeout.
    let start = tokio::time::Instant::now();
    assert!(b.ask_id(key.id(), Protocol::Ledger).await.is_ok());
    assert!(start.elapsed() < Duration::from_millis(800), "took {:?}", start.elapsed());
}

#[tokio::test]
async fn a_peer_that_moved_is_reached_at_its_new_address() {
    let ca = mesh_ca();
    let (a, b) = (node(&ca), node(&ca));
    b.knows(&a);
    assert!(b.ask(&a, Protocol::Rpc, "one").await.is_ok());
    // The same node identity, now listening on a second endpoint.
    let moved = QuicTransport::bind(&a.key, &a.cert, &a.root, config(loopback()), Arc::new(AdmitAll)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    moved.serve(Protocol::Rpc, echo(Protocol::Rpc, calls.clone()));
    b.transport.set_peer_addr(a.id(), moved.local_addr().unwrap());
    assert!(b.ask(&a, Protocol::Rpc, "two").await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.calls.load(Ordering::SeqCst), 1);
}

impl Node {
    async fn ask_id(&self, to: NodeId, protocol: Protocol) -> Result<Bytes, TransportError> {
        self.transport.request(to, protocol, Bytes::from_static(b"after")).await
    }
}

/// The old endpoint's socket is released once its connections have drained; retry briefly.
async fn bind_retrying(key: &NodeKey, cert: &NodeCert, root: &MeshRoot, addr: SocketAddr) -> QuicTransport {
    let mut attempts = 0;
    loop {
        match QuicTransport::bind(key, cert, root, config(addr), Arc::new(AdmitAll)) {
            Ok(transport) => return transport,
            Err(_) if attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}
