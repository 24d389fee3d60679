//! Learners, snapshots and voter changes.

use std::time::Duration;

use falak_ledger::{Committed, LedgerConfig, PeerInfo, Role};
use tokio::time::Instant;

use crate::cluster::{Cluster, expected_state, node, noop, test_config};

/// Snapshot every 10 entries, keep no log behind it (so a newcomer needs a snapshot) and send
/// snapshots in tiny chunks (so they take several messages).
fn snapshotting_config() -> LedgerConfig {
    LedgerConfig { snapshot_every: 10, logs_kept_after_snapshot: 0, snapshot_chunk_bytes: 8, ..test_config() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_replicates_and_publishes_every_committed_entry() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    let mut written = vec![noop(0)];
    cluster.ledger(node(1)).write(noop(0)).await.expect("write commits");

    let learner = cluster.start(node(9)).await;
    let mut changes = learner.subscribe();
    // Asked of a follower, a membership change is refused: only the leader's own planner makes
    // one. The leader adds it.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = *cluster.live_ids().iter().find(|id| **id != leader && **id != node(9)).expect("a follower");
    let refused = cluster.ledger(follower).add_learner(node(9), PeerInfo::new("127.0.0.1:7009")).await.unwrap_err();
    assert!(refused.to_string().contains("only the leader's own voter planner"), "{refused}");
    cluster.ledger(leader).add_learner(node(9), PeerInfo::new("127.0.0.1:7009")).await.expect("learner added");

    for i in 1..10 {
        let command = noop(i);
        learner.write(command.clone()).await.expect("a learner's write is forwarded");
        written.push(command);
    }
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;

    let metrics = learner.metrics().await;
    assert_eq!(metrics.role, Role::Learner);
    assert!(metrics.learners.contains(&node(9)));
    assert!(!metrics.voters.contains(&node(9)));

    let mut entries = 0;
    while entries < written.len() {
        match tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.expect("change").expect("open") {
            Committed::Entry { .. } => entries += 1,
            Committed::SnapshotInstalled { .. } => panic!("learner needed no snapshot"),
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_and_becomes_a_voter() {
    let mut cluster = Cluster::voters(3, snapshotting_config()).await;
    let mut written = Vec::new();
    for i in 0..35 {
        let command = noop(i);
        cluster.ledger(node(1)).write(command.clone()).await.expect("write commits");
        written.push(command);
    }
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let leader_ledger = cluster.ledger(leader).clone();
    wait_until("leader snapshot at 20", Duration::from_secs(5), || {
        let ledger = leader_ledger.clone();
        async move { ledger.metrics().await.snapshot.is_some_and(|index| index >= 20) }
    })
    .await;

    let newcomer = cluster.start(node(4)).await;
    let mut changes = newcomer.subscribe();
    cluster.ledger(leader).add_learner(node(4), PeerInfo::new("127.0.0.1:7004")).await.expect("learner added");
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    let first = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.expect("change").expect("open");
    assert!(matches!(first, Committed::SnapshotInstalled { index } if index >= 20), "got {first:?}");

    // Replace voter 3 by the caught-up newcomer; 3 stays a learner until removed.
    let voters = [node(1), node(2), node(4)].into();
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.ledger(leader).change_voters(voters, None).await.expect("voters changed");
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let metrics = cluster.ledger(leader).metrics().await;
    assert_eq!(metrics.voters, [node(1), node(2), node(4)].into());
    assert_eq!(metrics.learners, [node(3)].into(), "a demoted voter stays a learner");
    cluster.ledger(leader).remove_learners([node(3)].into(), None).await.expect("learner removed");
    cluster.crash(node(3)).await;
    let metrics = cluster.ledger(leader).metrics().await;
    assert!(metrics.learners.is_empty(), "learner 3 still listed: {:?}", metrics.learners);

    let command = noop(99);
    newcomer.write(command.clone()).await.expect("write with the new voter set");
    written.push(command);
    wait_until("newcomer votes", Duration::from_secs(5), || {
        let ledger = newcomer.clone();
        async move { ledger.metrics().await.role != Role::Learner }
    })
    .await;
    for id in [node(1), node(2), node(4)] {
        crate::cluster::wait_state(cluster.ledger(id), &expected_state(&written), Duration::from_secs(5)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_and_every_node_restarts_from_its_snapshot() {
    let mut cluster = Cluster::voters(3, snapshotting_config()).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = *cluster.live_ids().iter().find(|id| **id != leader).expect("a follower");
    cluster.crash(follower).await;

    let mut written = Vec::new();
    for i in 0..30 {
        let command = noop(i);
        cluster.ledger(leader).write(command.clone()).await.expect("write commits");
        written.push(command);
    }
    // Openraft never purges log entries a replication stream still needs, so the leader keeps
    // what the dead voter lacks (the node replaces dead voters to bound this) and the follower
    // catches up from the log.
    let restarted = cluster.start(follower).await;
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    let ledger = restarted.clone();
    wait_until("follower snapshots and purges on its own", Duration::from_secs(5), || {
        let ledger = ledger.clone();
        async move {
            let metrics = ledger.metrics().await;
            metrics.snapshot >= Some(20) && metrics.purged >= Some(20)
        }
    })
    .await;

    // Every node now restarts from its snapshot plus the log after it.
    for id in cluster.live_ids() {
        cluster.crash(id).await;
    }
    for id in [node(1), node(2), node(3)] {
        cluster.start(id).await;
    }
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

pub(crate) async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
