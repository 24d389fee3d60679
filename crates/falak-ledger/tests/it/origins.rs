//! Origins (ADR 0023): every write is stamped with the node the transport authenticated as its
//! sender, and every replica refuses commands made in another node's name. A follower and the
//! leader send commands in the third node's name, leader duties they may
//! not make, commands that name their own origin and membership changes: each is refused, and
//! no replica's state changes.

use std::time::Duration;

use falak_core::job::{JobId, TaskId, TaskReport};
use falak_core::ledger::{Command, RejectCode};
use falak_core::node::NodeRecord;
use falak_core::resources::Resources;
use falak_ledger::PeerInfo;

use crate::cluster::{Cluster, node, state_json, test_config};

fn record(n: u8) -> NodeRecord {
    NodeRecord {
        id: node(n),
        name: format!("n{n}"),
        labels: Default::default(),
        capacity: Resources::new(1000, 1 << 30),
        cost_per_hour: 0.0,
        transport_addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
        gossip_addr: String::new(),
        api_url: format!("https://127.0.0.1:{}", 7200 + u16::from(n)),
        namespaces: None,
    }
}

/// The state without what every applied entry moves (the clock, the count, the term).
fn unchanged_part(state: &falak_core::ledger::State) -> serde_json::Value {
    let mut value = state_json(state);
    if let Some(map) = value.as_object_mut() {
        map.remove("clock");
        map.remove("applied");
    }
    value
}

/// Wait until every replica has applied what the leader has.
async fn all_applied(cluster: &Cluster, leader: falak_ledger::NodeId) {
    let index = cluster.ledger(leader).status().applied.expect("the leader applied entries");
    for n in 1..=3 {
        let ledger = cluster.ledger(node(n)).clone();
        crate::membership::wait_until("replica applied everything", Duration::from_secs(5), || {
            let ledger = ledger.clone();
            async move { ledger.status().applied >= Some(index) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_another_node_s_name_are_refused_on_every_replica() {
    let cluster = Cluster::voters(3, test_config()).await;
    for n in 1..=3 {
        cluster.ledger(node(n)).write(Command::AdmitNode { record: record(n), now: 10 }).await.expect("self-admitted");
    }
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    all_applied(&cluster, leader).await;
    let before: Vec<_> = (1..=3).map(|n| unchanged_part(&cluster.ledger(node(n)).state())).collect();
    assert!(before.windows(2).all(|w| w[0] == w[1]), "the replicas differ before the test: {before:?}");

    // The victim is neither the leader nor the follower that send in its name.
    let others: Vec<_> = (1..=3).map(node).filter(|n| *n != leader).collect();
    let (follower, victim) = (others[0], others[1]);
    let mut hijacked = record(victim.0[0]);
    hijacked.api_url = "https://evil.example".into();
    let task = TaskId { job: JobId(1), index: 0 };
    let report = TaskReport {
        exit_code: Some(0),
        error: None,
        duration_ms: 1,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    };
    let forged = [
        Command::AdmitNode { record: hijacked, now: 20 },
        Command::AdmitNode { record: record(9), now: 20 },
        Command::ReleaseInstances { node: victim, function: String::new(), instances: vec![], all: true, now: 20 },
        Command::RenewLeases { node: victim, leases: vec![(task, 1)], lease_ms: 1000, now: 20 },
        Command::Finish { task, node: victim, fencing: 1, report, now: 20 },
        Command::FinishInvocation { id: 1, node: victim, attempts: 1, response: None, error: None, now: 20 },
        Command::Batch(vec![
            Command::Noop { now: 20 },
            Command::RenewLeases { node: victim, leases: vec![], lease_ms: 1, now: 20 },
        ]),
    ];
    for via in [follower, leader] {
        for command in &forged {
            let applied = cluster.ledger(via).write(command.clone()).await.expect("committed");
            let rejection = applied.outcome.rejection().unwrap_or_else(|| panic!("{command:?} from {via} applied"));
            assert_eq!(rejection.code, RejectCode::Forbidden, "{}", rejection.message);
        }
    }
    // A leader duty from a follower, even of the current term.
    let term = cluster.ledger(leader).leader_term().expect("the leader knows its term");
    let offline = Command::SetNodeOffline { node: victim, offline: true, term, now: 30 };
    let applied = cluster.ledger(follower).write(offline).await.expect("committed");
    assert_eq!(applied.outcome.rejection().map(|r| r.code), Some(RejectCode::Forbidden), "{applied:?}");
    // An origin of one's own is refused before it reaches the log; so is a membership change.
    let named = Command::Sent { by: victim, command: Box::new(Command::Noop { now: 40 }) };
    let refused = cluster.ledger(follower).write(Command::Batch(vec![named])).await.unwrap_err();
    assert!(refused.to_string().contains("names its own origin"), "{refused}");
    let refused = cluster.ledger(follower).change_voters([follower].into(), None).await.unwrap_err();
    assert!(refused.to_string().contains("only the leader's own voter planner"), "{refused}");
    let refused = cluster.ledger(follower).add_learner(node(9), PeerInfo::new("127.0.0.1:7009")).await.unwrap_err();
    assert!(refused.to_string().contains("only the leader's own voter planner"), "{refused}");

    // Every replica applied all of it, and none changed.
    all_applied(&cluster, leader).await;
    for n in 1..=3 {
        assert_eq!(unchanged_part(&cluster.ledger(node(n)).state()), before[0], "node {n}'s state changed");
    }
    assert_eq!(cluster.ledger(leader).metrics().await.voters.len(), 3);
    cluster.shutdown().await;
}
