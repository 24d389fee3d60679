//! Real UDP on 127.0.0.1: three drivers converge, share gossip, and see a killed node and a
//! departing node OFFLINE.

use std::time::Duration;

use falak_membership::{
    Health, MemberIdentity, Membership, MembershipConfig, MembershipEvent, MembershipHandle, NodeView, spawn,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

use crate::sim::{SECRET, gossip, node_id};

async fn start(index: usize) -> MembershipHandle {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = socket.local_addr().expect("bound address");
    let identity = MemberIdentity::new(node_id(index), addr, 1);
    let core = Membership::new(identity, &SECRET, MembershipConfig::lan(), ChaCha8Rng::seed_from_u64(index as u64))
        .expect("valid core");
    spawn(socket, core)
}

/// Waits until `check` holds for the handle's view, or fails the test after `limit`.
async fn wait_until(handle: &MembershipHandle, limit: Duration, what: &str, check: impl Fn(&[NodeView]) -> bool) {
    let mut watch = handle.watch();
    let result = timeout(limit, async {
        loop {
            if check(&watch.borrow_and_update().peers) {
                return;
            }
            watch.changed().await.expect("driver alive");
        }
    })
    .await;
    assert!(result.is_ok(), "{what} within {limit:?}; view: {:?}", handle.view());
}

fn health_of(view: &[NodeView], index: usize) -> Option<Health> {
    view.iter().find(|v| v.id == node_id(index)).map(|v| v.health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drivers_converge_gossip_and_detect_a_killed_node() {
    let nodes = [start(0).await, start(1).await, start(2).await];
    let seed = nodes[0].local_addr();
    let mut events = nodes[0].subscribe();
    nodes[1].join(seed).await.expect("join");
    nodes[2].join(seed).await.expect("join");
    for (i, node) in nodes.iter().enumerate() {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        wait_until(node, Duration::from_secs(3), "all healthy", |view| {
            others.iter().all(|&j| health_of(view, j) == Some(Health::Healthy))
        })
        .await;
    }

    nodes[2].set_local_gossip(gossip(3, 4)).await.expect("gossip");
    wait_until(&nodes[0], Duration::from_secs(2), "gossip arrives", |view| {
        view.iter().any(|v| v.id == node_id(2) && v.gossip.as_ref().is_some_and(|g| g.version == 3))
    })
    .await;

    // kill -9: the driver stops without a word to its peers.
    let [first, second, killed] = nodes;
    let killed_at = Instant::now();
    drop(killed);
    for node in [&first, &second] {
        wait_until(node, Duration::from_secs(3), "killed node offline", |view| {
            health_of(view, 2) == Some(Health::Offline)
        })
        .await;
    }
    let detected = killed_at.elapsed();
    assert!(detected <= Duration::from_secs(3), "detection took {detected:?}");
    assert_eq!(health_of(&first.view(), 1), Some(Health::Healthy), "the live node stayed healthy");

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(seen.contains(&MembershipEvent::Healthy(node_id(1))), "{seen:?}");
    assert!(seen.contains(&MembershipEvent::Gossip(node_id(2))), "{seen:?}");
    assert!(seen.contains(&MembershipEvent::Offline(node_id(2))), "{seen:?}");

    // A clean shutdown is seen at once rather than after the suspicion window.
    let left_at = Instant::now();
    second.shutdown().await;
    wait_until(&first, Duration::from_secs(1), "departed node offline", |view| {
        health_of(view, 1) == Some(Health::Offline)
    })
    .await;
    assert!(left_at.elapsed() < MembershipConfig::lan().suspect_to_offline);
    assert!(first.stats().dropped_bad_seal == 0);
    first.shutdown().await;
}
