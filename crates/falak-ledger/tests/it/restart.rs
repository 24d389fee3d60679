//! Restarts from the data directory keep every acknowledged write.

use std::time::Duration;

use falak_ledger::{Ledger, OpenLedgerError};

use crate::cluster::{Cluster, expected_state, node, noop, state_json, test_config};
use falak_transport::MemoryNetwork;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_keeps_and_catches_up_every_acknowledged_write() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = *cluster.live_ids().iter().find(|id| **id != leader).expect("a follower");

    let mut written = Vec::new();
    for i in 0..10 {
        let command = noop(i);
        cluster.ledger(follower).write(command.clone()).await.expect("write commits");
        written.push(command);
    }
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    cluster.crash(follower).await;
    for i in 10..20 {
        let command = noop(i);
        cluster.ledger(leader).write(command.clone()).await.expect("write commits with one follower down");
        written.push(command);
    }

    // Back from its own disk, the follower first recovers what it had, then catches up.
    cluster.start(follower).await;
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_whole_mesh_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    let mut written = Vec::new();
    for i in 0..25u64 {
        let command = noop(i);
        let via = node(1 + (i % 3) as u8);
        cluster.ledger(via).write(command.clone()).await.expect("write commits");
        written.push(command);
    }
    // Crash all three at once: no node gets to see the others go.
    for id in cluster.live_ids() {
        cluster.crash(id).await;
    }
    for i in 1..=3 {
        cluster.start(node(i)).await;
    }
    cluster.wait_leader(Duration::from_secs(5)).await;
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;

    // The restarted mesh keeps committing on top of the recovered log.
    let command = noop(1_000);
    cluster.ledger(node(2)).write(command.clone()).await.expect("write after restart");
    written.push(command);
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_alone_reapplies_its_committed_log_before_hearing_from_peers() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    let mut written = Vec::new();
    for i in 0..8 {
        let command = noop(i);
        cluster.ledger(node(1)).write(command.clone()).await.expect("write commits");
        written.push(command);
    }
    cluster.wait_converged(&expected_state(&written), Duration::from_secs(5)).await;
    for id in cluster.live_ids() {
        cluster.crash(id).await;
    }
    // Alone and unable to elect anyone, the node still re-applies its committed log (the
    // committed index is persisted), so its state is current at once. After a real kill -9 the
    // persisted index may trail by the last batch, which the next leader then commits.
    let alone = cluster.start(node(3)).await;
    crate::cluster::wait_state(&alone, &expected_state(&written), Duration::from_secs(2)).await;
    assert_eq!(state_json(&alone.state()), expected_state(&written));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_is_refused() {
    let cluster = Cluster::empty(test_config());
    let dir = cluster.data_dir(node(1));
    let net = MemoryNetwork::new();
    let first = Ledger::open(&dir, node(1), net.transport(node(1)), test_config()).await.expect("open");
    first.shutdown().await.expect("shutdown");
    let err = match Ledger::open(&dir, node(2), net.transport(node(2)), test_config()).await {
        Ok(_) => panic!("another node's data dir was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, OpenLedgerError::WrongNode { .. }), "unexpected error {err}");
}

/// The ledger holds every spec, token hash and result of the mesh: its directory is
/// owner-only and its database files 0600, made so and tightened again at every open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_files_are_owner_only_at_every_open() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let set = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let cluster = Cluster::empty(test_config());
    let dir = cluster.data_dir(node(1));
    let net = MemoryNetwork::new();
    let files = [dir.join("ledger.redb"), dir.join("events.redb")];

    let ledger = Ledger::open(&dir, node(1), net.transport(node(1)), test_config()).await.expect("open");
    assert_eq!(mode(&dir), 0o700);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    ledger.shutdown().await.expect("shutdown");

    // Made by an older version, copied, or under a loose umask: tightened when opened again.
    set(&dir, 0o755);
    for file in &files {
        set(file, 0o644);
    }
    let ledger = Ledger::open(&dir, node(1), net.transport(node(1)), test_config()).await.expect("reopen");
    assert_eq!(mode(&dir), 0o700);
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    ledger.shutdown().await.expect("shutdown");
}
