//! The event history: the same on every replica, resumable by event id across restarts, with
//! its gaps said out loud; and leader duties fenced by term.

use std::time::Duration;

use falak_core::access::{JoinTicketRecord, Token};
use falak_core::ledger::{Command, EventId, LedgerEvent, RejectCode};
use falak_core::node::NodeRecord;
use falak_core::resources::Resources;
use falak_ledger::{ChangeMembershipError, HistoryEvent, Ledger, LedgerConfig, PeerInfo};

use crate::cluster::{Cluster, node, test_config};
use crate::membership::wait_until;

/// The join ticket the made-up nodes join with: a node admits only itself (`AdmitNode` for
/// another node is refused), others join through a ticket.
fn ticket() -> Token {
    Token::from_random([7; 40])
}

/// Node `n` joins through [`ticket`], which the same entry records first (recording it again
/// changes nothing).
fn admit(n: u8) -> Command {
    let record = NodeRecord {
        id: node(n),
        name: format!("n{n}"),
        labels: Default::default(),
        capacity: Resources::new(1000, 1 << 30),
        cost_per_hour: 0.0,
        transport_addr: format!("127.0.0.1:{}", 7000 + u16::from(n)),
        gossip_addr: String::new(),
        api_url: String::new(),
        namespaces: None,
    };
    let (ticket, now) = (ticket(), 1_000 + u64::from(n));
    let open = Command::CreateJoinTicket { record: JoinTicketRecord::new(&ticket, 1, u64::MAX / 2, 100), now };
    Command::Batch(vec![open, Command::JoinNode { ticket: ticket.id, hash: ticket.hash(), record, now }])
}

/// Everything `ledger` holds after `after`, page by page.
async fn read_all(ledger: &Ledger, mut after: Option<EventId>) -> Vec<HistoryEvent> {
    let mut out = Vec::new();
    loop {
        let page = ledger.history(after, 7).await.expect("history reads");
        assert_eq!(page.gap, None, "unexpected gap reading after {after:?}");
        let Some(last) = page.events.last() else { return out };
        after = Some(last.id);
        out.extend(page.events);
    }
}

fn admitted(events: &[HistoryEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            LedgerEvent::NodeAdmitted { node, .. } => Some(node.0[0]),
            _ => None,
        })
        .collect()
}

/// Snapshots every 10 entries, so a restart replays only the log after its snapshot.
fn snapshotting() -> LedgerConfig {
    LedgerConfig { snapshot_every: 10, ..test_config() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_holds_one_history_that_survives_restarts() {
    let mut cluster = Cluster::voters(3, snapshotting()).await;
    for n in 10..40 {
        cluster.ledger(node(1 + n % 3)).write(admit(n)).await.expect("write commits");
    }
    let reference = read_all(cluster.ledger(node(1)), None).await;
    assert_eq!(admitted(&reference), (10..40).collect::<Vec<_>>());
    assert!(reference.windows(2).all(|w| w[0].id < w[1].id), "ids increase along the history");
    for i in 2..=3 {
        let ledger = cluster.ledger(node(i)).clone();
        wait_until("replica applied everything", Duration::from_secs(5), || {
            let ledger = ledger.clone();
            let want = reference.len();
            async move { read_all(&ledger, None).await.len() == want }
        })
        .await;
        assert_eq!(read_all(&ledger, None).await, reference, "node {i} holds the same ids, times and events");
    }

    // A reader stops half-way, the node it reads restarts (after snapshots, so it replays
    // only part of its log) and more is written: it resumes exactly where it stopped.
    let middle = reference.iter().find(|e| admitted(std::slice::from_ref(e)) == [24]).expect("node 24's event").id;
    cluster.crash(node(2)).await;
    for n in 40..60 {
        cluster.ledger(node(1)).write(admit(n)).await.expect("write commits with a node down");
    }
    let restarted = cluster.start(node(2)).await;
    wait_until("restarted replica caught up", Duration::from_secs(5), || {
        let ledger = restarted.clone();
        async move { admitted(&read_all(&ledger, None).await).last() == Some(&59) }
    })
    .await;
    let resumed = read_all(&restarted, Some(middle)).await;
    let all = read_all(cluster.ledger(node(1)), None).await;
    let from_middle: Vec<HistoryEvent> = all.into_iter().filter(|e| e.id > middle).collect();
    assert_eq!(resumed, from_middle, "resumed on a restarted node: nothing missed, nothing twice");
    assert_eq!(admitted(&resumed), (25..60).collect::<Vec<_>>());
    // An id that names a whole entry resumes after that entry.
    let entry = EventId::end_of(middle.index);
    assert!(read_all(&restarted, Some(entry)).await.iter().all(|e| e.id.index > middle.index));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_installed_a_snapshot_says_where_its_history_resumes() {
    // No log kept behind snapshots: a newcomer needs one.
    let config = LedgerConfig { logs_kept_after_snapshot: 0, ..snapshotting() };
    let mut cluster = Cluster::voters(3, config).await;
    for n in 10..40 {
        cluster.ledger(node(1)).write(admit(n)).await.expect("write commits");
    }
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let early = read_all(cluster.ledger(leader), None).await[2].id;
    let newcomer = cluster.start(node(9)).await;
    cluster.ledger(leader).add_learner(node(9), PeerInfo::new("127.0.0.1:7009")).await.expect("learner added");
    newcomer.write(admit(40)).await.expect("write through the newcomer");
    let page = newcomer.history(Some(early), 100).await.expect("history reads");
    let resumes = page.gap.expect("the newcomer never held the early events, and says so");
    assert!(resumes > early.index, "{page:?}");
    assert!(page.events.iter().all(|e| e.id.index >= resumes));
    assert_eq!(admitted(&page.events).last(), Some(&40));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_duties_and_plans_of_an_older_term_are_refused() {
    let mut cluster = Cluster::voters(3, test_config()).await;
    // A second leader, so that there is an older term than the current one.
    let first = cluster.wait_leader(Duration::from_secs(5)).await;
    let old = cluster.ledger(first).leader_term().expect("the leader knows its term");
    cluster.crash(first).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let survivor = *cluster.live_ids().iter().find(|id| **id != leader).expect("a follower");
    cluster.ledger(leader).write(admit(7)).await.expect("admitted");
    let term = cluster.ledger(leader).leader_term().expect("the leader knows its term");
    assert!(term > old);
    assert_eq!(cluster.ledger(leader).status().leader, Some(leader));
    // A mark from a term before this leader's is refused by every replica.
    let stale = Command::SetNodeOffline { node: node(7), offline: true, term: old, now: 5_000 };
    let applied = cluster.ledger(leader).write(stale).await.expect("committed");
    assert_eq!(applied.outcome.rejection().map(|r| r.code), Some(RejectCode::Stale), "{applied:?}");
    assert!(!cluster.ledger(leader).state().node(&node(7)).unwrap().offline);
    let current = Command::SetNodeOffline { node: node(7), offline: true, term, now: 5_001 };
    // Only the leader makes its duties: a follower's, even of the current term, is refused.
    let applied = cluster.ledger(survivor).write(current.clone()).await.expect("committed");
    assert_eq!(applied.outcome.rejection().map(|r| r.code), Some(RejectCode::Forbidden), "{applied:?}");
    assert!(!cluster.ledger(leader).state().node(&node(7)).unwrap().offline);
    let applied = cluster.ledger(leader).write(current).await.expect("committed");
    assert_eq!(applied.events, vec![LedgerEvent::NodeOffline { node: node(7), term }]);
    // A voter plan made in an older term changes nothing; sent by a follower, no plan does.
    let voters: std::collections::BTreeSet<_> = cluster.live_ids().into_iter().collect();
    let refused = cluster.ledger(leader).change_voters(voters.clone(), Some(old)).await.unwrap_err();
    assert!(matches!(&refused, ChangeMembershipError::Refused { reason, .. } if reason.contains("stale")), "{refused}");
    for plan in [Some(old), Some(term), None] {
        let refused = cluster.ledger(survivor).change_voters(voters.clone(), plan).await.unwrap_err();
        assert!(
            matches!(&refused, ChangeMembershipError::Refused { reason, .. } if reason.contains("only the leader's own voter planner")),
            "{refused}"
        );
    }
    assert_eq!(cluster.ledger(leader).metrics().await.voters.len(), 3);
    cluster.shutdown().await;
}
