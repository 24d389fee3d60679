//! Leader loss: a new leader takes over and writes continue; without quorum writes fail fast.

use std::time::Duration;

use falak_ledger::{LedgerConfig, WriteError};
use tokio::time::Instant;

use crate::cluster::{Cluster, expected_state, noop, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_writes_continue() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    let mut written = Vec::new();
    for i in 0..5 {
        let command = noop(i);
        let any = cluster.live_ids()[0];
        cluster.ledger(any).write(command.clone()).await.expect("write commits");
        written.push(command);
    }

    for round in 0..2u64 {
        let old_leader = cluster.wait_leader(Duration::from_secs(5)).await;
        let survivor = *cluster.live_ids().iter().find(|id| **id != old_leader).expect("a survivor");
        // Kill the leader after its last acknowledged write, then write through a survivor that
        // still believes the dead node leads: the write must find the new leader by itself.
        let killed_at = Instant::now();
        cluster.crash(old_leader).await;
        let command = noop(100 + round);
        cluster.ledger(survivor).write(command.clone()).await.expect("write after leader loss");
        let failover = killed_at.elapsed();
        written.push(command);
        println!("leader killed -> first write committed by the new leader: {failover:?}");
        assert!(failover < Duration::from_secs(3), "failover took {failover:?}");

        let new_leader = cluster.wait_leader(Duration::from_secs(5)).await;
        assert_ne!(new_leader, old_leader);
        cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;

        // Bring the old leader back: it rejoins as a follower and catches up.
        cluster.start(old_leader).await;
        cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_quorum_fail_within_the_bound() {
    let bound = Duration::from_secs(1);
    let mut cluster = Cluster::voters(3, LedgerConfig { write_timeout: bound, ..test_config() }).await;
    cluster.ledger(cluster.live_ids()[0]).write(noop(0)).await.expect("write with quorum");

    // Keep the leader and lose both followers, then the reverse: a leader without quorum and a
    // follower without a leader must both give up within the bound with a clear error.
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let followers: Vec<_> = cluster.live_ids().into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.crash(*id).await;
    }
    let started = Instant::now();
    let err = cluster.ledger(leader).write(noop(1)).await.expect_err("no quorum, no commit");
    let waited = started.elapsed();
    assert!(waited < bound + Duration::from_millis(500), "leader without quorum took {waited:?}");
    assert!(matches!(err, WriteError::Timeout { .. } | WriteError::NoLeader { .. }), "unexpected error {err}");
    println!("leader without quorum: {err}");

    cluster.crash(leader).await;
    cluster.start(followers[0]).await;
    let started = Instant::now();
    let err = cluster.ledger(followers[0]).write(noop(2)).await.expect_err("no quorum, no commit");
    let waited = started.elapsed();
    assert!(waited < bound + Duration::from_millis(500), "lone follower took {waited:?}");
    assert!(matches!(err, WriteError::NoLeader { .. }), "unexpected error {err}");
    println!("follower without quorum: {err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_and_the_majority_keeps_writing() {
    let cluster = Cluster::voters(3, test_config()).await;
    let old_leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let others: Vec<_> = cluster.live_ids().into_iter().filter(|id| *id != old_leader).collect();
    for id in &others {
        cluster.net.cut(old_leader, *id);
    }
    let mut written = Vec::new();
    for i in 0..3 {
        let command = noop(i);
        cluster.ledger(others[0]).write(command.clone()).await.expect("majority side commits");
        written.push(command);
    }
    let new_leader = cluster.ledger(others[0]).leader().expect("majority side has a leader");
    assert_ne!(new_leader, old_leader);

    cluster.net.heal_all();
    // After healing, the old leader learns the new term and converges on the majority's log.
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    cluster.shutdown().await;
}
