//! Writes commit through any node, answer only after commit, and every replica converges.

use std::time::Duration;

use falak_ledger::{Committed, Role};

use crate::cluster::{Cluster, expected_state, node, noop, state_json, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_commit_writes_through_any_node() {
    let cluster = Cluster::voters(3, test_config()).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;

    let mut written = Vec::new();
    for round in 0..5u64 {
        for i in 1..=3u8 {
            let command = noop(round * 3 + u64::from(i));
            cluster.ledger(node(i)).write(command.clone()).await.expect("write commits");
            written.push(command);
            // The answer comes only after commit: the leader applies an entry once committed,
            // and it has applied this one by the time any node answers.
            assert_eq!(
                state_json(&cluster.ledger(leader).state()),
                expected_state(&written),
                "leader state lags a write node {i} acknowledged"
            );
        }
    }
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;

    let metrics = cluster.ledger(leader).metrics().await;
    assert_eq!(metrics.role, Role::Leader);
    assert_eq!(metrics.voters, [node(1), node(2), node(3)].into());
    assert!(metrics.learners.is_empty());
    assert!(metrics.committed >= Some(15), "committed index {:?} after 15 writes", metrics.committed);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_publishes_each_committed_entry_in_order() {
    let cluster = Cluster::voters(3, test_config()).await;
    let mut subscriptions: Vec<_> = cluster.live().map(|ledger| ledger.subscribe()).collect();

    let mut answers = Vec::new();
    for i in 0..10 {
        answers.push(cluster.ledger(node(2)).write(noop(i)).await.expect("write commits"));
    }
    for subscription in &mut subscriptions {
        let mut last_index = 0;
        for answer in &answers {
            let change = tokio::time::timeout(Duration::from_secs(5), subscription.recv())
                .await
                .expect("change published")
                .expect("subscription open");
            let Committed::Entry { index, applied, .. } = change else { panic!("unexpected {change:?}") };
            assert!(index > last_index, "entries published out of order");
            assert_eq!(&applied, answer, "replica applied something else than the leader answered");
            last_index = index;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_from_all_nodes_all_commit() {
    let cluster = Cluster::voters(3, test_config()).await;
    let mut tasks = Vec::new();
    for i in 1..=3u8 {
        let ledger = cluster.ledger(node(i)).clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..30u64 {
                ledger.write(noop(u64::from(i) * 100 + n)).await.expect("write commits");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    // Order across writers is the leader's, which has applied every acknowledged write.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let reference = state_json(&cluster.ledger(leader).state());
    cluster.wait_converged(&reference, Duration::from_secs(5)).await;
    let applied = cluster.ledger(leader).metrics().await.last_applied.expect("applied");
    assert!(applied >= 90, "only {applied} entries applied for 90 writes");
    cluster.shutdown().await;
}
