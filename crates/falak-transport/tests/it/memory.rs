//! The in-memory network: delivery, cuts, crashes and restarts, under a paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use falak_transport::{MemoryConfig, MemoryNetwork, MemoryTransport, NodeId, Protocol, Transport, TransportError};

use crate::{echo, slow};

fn id(n: u8) -> NodeId {
    NodeId([n; 32])
}

/// Nodes 1..=n, each serving echo on the rpc protocol.
fn network(n: u8) -> (MemoryNetwork, Vec<Arc<MemoryTransport>>) {
    let network = MemoryNetwork::new();
    let transports = (1..=n).map(|i| serving(&network, id(i))).collect();
    (network, transports)
}

fn serving(network: &MemoryNetwork, node: NodeId) -> Arc<MemoryTransport> {
    let transport = network.transport(node);
    transport.serve(Protocol::Rpc, echo(Protocol::Rpc, Arc::new(AtomicUsize::new(0))));
    transport
}

async fn ask(from: &MemoryTransport, to: NodeId) -> Result<Bytes, TransportError> {
    from.request(to, Protocol::Rpc, Bytes::from_static(b"hi")).await
}

fn is_unreachable(result: &Result<Bytes, TransportError>) -> bool {
    matches!(result, Err(TransportError::Unreachable { .. }))
}

#[tokio::test(start_paused = true)]
async fn requests_reach_the_addressed_node_with_the_sender_id() {
    let (_network, nodes) = network(2);
    assert_eq!(ask(&nodes[0], id(2)).await.unwrap(), format!("falak/rpc/1 {} hi", id(1).short()));
    assert_eq!(ask(&nodes[1], id(1)).await.unwrap(), format!("falak/rpc/1 {} hi", id(2).short()));
    assert!(is_unreachable(&ask(&nodes[0], id(9)).await), "unknown node");
    let reason = match nodes[0].request(id(2), Protocol::Ledger, Bytes::new()).await {
        Err(TransportError::Refused { reason, .. }) => reason,
        other => panic!("{other:?}"),
    };
    assert!(reason.contains("no handler"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn cut_links_fail_until_healed() {
    let (network, nodes) = network(3);
    network.cut(id(1), id(2));
    assert!(is_unreachable(&ask(&nodes[0], id(2)).await));
    assert!(is_unreachable(&ask(&nodes[1], id(1)).await));
    assert!(ask(&nodes[0], id(3)).await.is_ok(), "other links are untouched");
    network.heal(id(1), id(2));
    assert!(ask(&nodes[0], id(2)).await.is_ok());

    // One way: the request arrives, the reply is lost.
    network.cut_one_way(id(2), id(1));
    assert!(is_unreachable(&ask(&nodes[0], id(2)).await));
    assert!(!network.is_linked(id(2), id(1)) && network.is_linked(id(1), id(2)));
    network.heal_all();

    network.isolate(id(3));
    assert!(is_unreachable(&ask(&nodes[0], id(3)).await));
    assert!(is_unreachable(&ask(&nodes[2], id(2)).await));
    assert!(ask(&nodes[0], id(2)).await.is_ok());
    network.heal_all();
    assert!(ask(&nodes[2], id(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_crashed_node_neither_answers_nor_sends_until_restarted() {
    let (network, nodes) = network(2);
    network.crash(id(2));
    assert!(network.is_crashed(id(2)));
    assert!(is_unreachable(&ask(&nodes[0], id(2)).await));
    assert_eq!(ask(&nodes[1], id(1)).await, Err(TransportError::Closed));

    network.restart(id(2));
    // Transports from before the crash stay dead, and serve() on them does nothing.
    assert!(!nodes[1].is_alive());
    assert_eq!(ask(&nodes[1], id(1)).await, Err(TransportError::Closed));
    let reborn = network.transport(id(2));
    assert!(matches!(ask(&nodes[0], id(2)).await, Err(TransportError::Refused { .. })), "no handlers yet");
    nodes[1].serve(Protocol::Rpc, slow(Duration::ZERO, "stale"));
    reborn.serve(Protocol::Rpc, slow(Duration::ZERO, "reborn"));
    assert_eq!(ask(&nodes[0], id(2)).await.unwrap(), "reborn");
    assert!(ask(&reborn, id(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_crash_aborts_requests_in_flight() {
    let (network, nodes) = network(2);
    nodes[1].serve(Protocol::Rpc, slow(Duration::from_secs(2), "done"));
    let pending = tokio::spawn(nodes[0].request(id(2), Protocol::Rpc, Bytes::new()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    network.crash(id(2));
    assert!(is_unreachable(&pending.await.unwrap()));
}

#[tokio::test(start_paused = true)]
async fn slow_handlers_time_out() {
    let network =
        MemoryNetwork::with_config(MemoryConfig { request_timeout: Duration::from_secs(1), ..Default::default() });
    let (a, b) = (serving(&network, id(1)), network.transport(id(2)));
    b.serve(Protocol::Rpc, slow(Duration::from_secs(10), "late"));
    let start = tokio::time::Instant::now();
    assert_eq!(ask(&a, id(2)).await, Err(TransportError::Timeout(id(2).short())));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn admission_is_checked_per_request() {
    let (_network, nodes) = network(3);
    nodes[1].set_admission(Arc::new(|node: &NodeId, _: Protocol| *node == id(3)));
    assert!(matches!(ask(&nodes[0], id(2)).await, Err(TransportError::Refused { .. })));
    assert!(ask(&nodes[2], id(2)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn oversize_messages_fail_with_too_large() {
    let network = MemoryNetwork::with_config(MemoryConfig { max_message_bytes: 8, ..Default::default() });
    let (a, _b) = (serving(&network, id(1)), serving(&network, id(2)));
    assert_eq!(
        a.request(id(2), Protocol::Rpc, Bytes::from_static(b"0123456789")).await,
        Err(TransportError::TooLarge { size: 10, limit: 8 })
    );
    // The echo reply ("falak/rpc/1 ...") exceeds 8 bytes too.
    assert!(matches!(ask(&a, id(2)).await, Err(TransportError::TooLarge { limit: 8, .. })));
}

#[tokio::test(start_paused = true)]
async fn delays_are_seeded_and_bounded() {
    async fn elapsed(seed: u64) -> Vec<Duration> {
        let delay = (Duration::from_millis(10), Duration::from_millis(50));
        let network = MemoryNetwork::with_config(MemoryConfig { delay, seed, ..Default::default() });
        let (a, _b) = (serving(&network, id(1)), serving(&network, id(2)));
        let mut out = Vec::new();
        for _ in 0..5 {
            let start = tokio::time::Instant::now();
            ask(&a, id(2)).await.unwrap();
            out.push(start.elapsed());
        }
        out
    }
    let first = elapsed(7).await;
    assert!(first.iter().all(|d| *d >= Duration::from_millis(20) && *d <= Duration::from_millis(100)), "{first:?}");
    assert_eq!(first, elapsed(7).await, "same seed, same delays");
    assert_ne!(first, elapsed(8).await);
}

#[tokio::test(start_paused = true)]
async fn handlers_run_once_per_request() {
    let network = MemoryNetwork::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (a, b) = (network.transport(id(1)), network.transport(id(2)));
    b.serve(Protocol::Events, echo(Protocol::Events, calls.clone()));
    for _ in 0..3 {
        a.request(id(2), Protocol::Events, Bytes::new()).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(a.local_id(), id(1));
}
