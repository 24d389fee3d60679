//! Candidacy: the best-ranked node claims at once, lower ranks after their stagger.

use std::collections::BTreeMap;

use falak_core::election::{Candidacy, ElectionConfig, Observed, leader_duties};
use falak_core::job::{JobId, TaskId, TaskState};
use falak_core::ledger::{Command, Outcome};
use falak_core::placement::Health;

use crate::fixtures::*;

fn healthy() -> BTreeMap<falak_core::NodeId, Observed> {
    (1..=3).map(|n| (node_id(n), Observed { health: Health::Healthy, gossip: None, answering: true })).collect()
}

#[test]
fn nodes_split_a_job_between_them_without_conflicting_claims() {
    let mut s = mesh();
    s.apply(&job("c", 9));
    let cfg = ElectionConfig::default();
    let observed = healthy();
    let mut all = Vec::new();
    for n in 1..=3 {
        all.extend(Candidacy::default().step(&s, &observed, node_id(n), 100, &cfg));
    }
    // Each task is claimed by exactly one node at once: rank 0 only.
    assert_eq!(all.len(), 9);
    let mut per_node = BTreeMap::new();
    for c in &all {
        let out = s.apply(c).outcome;
        assert!(matches!(out, Outcome::Claimed { .. }), "{out:?}");
        if let Command::Claim { node, .. } = c {
            *per_node.entry(*node).or_insert(0) += 1;
        }
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
}

#[test]
fn a_lower_ranked_node_claims_after_its_stagger_when_the_best_is_silent() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    let cfg = ElectionConfig::default();
    let observed = healthy();
    let mut candidacies: Vec<Candidacy> = (0..3).map(|_| Candidacy::default()).collect();
    let at_once: Vec<usize> =
        (0..3).filter(|i| !candidacies[*i].step(&s, &observed, node_id(*i as u8 + 1), 0, &cfg).is_empty()).collect();
    assert_eq!(at_once.len(), 1);
    // The winner never proposes (it crashed). After 2 staggers, everyone else has claimed.
    let later: Vec<Command> = (0..3)
        .filter(|i| !at_once.contains(i))
        .flat_map(|i| candidacies[i].step(&s, &observed, node_id(i as u8 + 1), 2 * cfg.stagger_ms, &cfg))
        .collect();
    assert_eq!(later.len(), 2);
    let outcomes: Vec<Outcome> = later.iter().map(|c| s.apply(c).outcome).collect();
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Claimed { .. })).count(), 1);
    assert_eq!(s.task(TaskId { job: JobId(1), index: 0 }).unwrap().state, TaskState::Assigned);
}

#[test]
fn leader_marks_offline_nodes_and_expires_leases() {
    let mut s = mesh();
    s.apply(&job("c", 1));
    s.apply(&claim(TaskId { job: JobId(1), index: 0 }, 1, node_id(2), 0));
    let mut observed = healthy();
    observed.insert(node_id(2), Observed { health: Health::Offline, gossip: None, answering: false });
    let duties = leader_duties(&s, &observed, node_id(1), 4, 10_000);
    assert!(duties.contains(&Command::SetNodeOffline { node: node_id(2), offline: true, term: 4, now: 10_000 }));
    assert!(duties.contains(&Command::ExpireLeases { term: 4, now: 10_000 }));
    for d in &duties {
        s.apply_in_term(4, d);
    }
    assert_eq!(s.task(TaskId { job: JobId(1), index: 0 }).unwrap().state, TaskState::Retrying);
    assert!(leader_duties(&s, &observed, node_id(1), 4, 10_001).is_empty());
}

#[test]
fn a_leader_clears_its_own_offline_mark_and_leaves_unseen_nodes_alone() {
    let mut s = mesh();
    // A deposed leader's view marked node 1 OFFLINE; node 1 now leads. It sees nobody yet.
    s.apply_in_term(3, &Command::SetNodeOffline { node: node_id(1), offline: true, term: 3, now: 5 });
    s.apply_in_term(3, &Command::SetNodeOffline { node: node_id(3), offline: true, term: 3, now: 5 });
    let duties = leader_duties(&s, &BTreeMap::new(), node_id(1), 4, 6);
    assert_eq!(duties, vec![Command::SetNodeOffline { node: node_id(1), offline: false, term: 4, now: 6 }]);
    // Once it sees node 3 HEALTHY, node 3 is marked back too.
    let duties = leader_duties(&s, &healthy(), node_id(1), 4, 7);
    assert_eq!(duties.len(), 2, "{duties:?}");
    assert!(duties.contains(&Command::SetNodeOffline { node: node_id(3), offline: false, term: 4, now: 7 }));
}

#[test]
fn a_node_claims_no_more_tasks_than_it_has_started() {
    let mut s = mesh();
    s.apply(&capsule("tiny", "1m", 1));
    s.apply(&job("tiny", 40));
    let cfg = ElectionConfig { max_unstarted: 8, ..ElectionConfig::default() };
    let observed = healthy();
    let me = node_id(1);
    let mut candidacy = Candidacy::default();
    // Long after every stagger, so this node may claim any task, whatever its rank.
    let now = 60_000;
    let first = candidacy.step(&s, &observed, me, now, &cfg);
    assert_eq!(first.len(), 8, "claims up to the bound at once");
    assert!(candidacy.step(&s, &observed, me, now + 1, &cfg).is_empty(), "nothing while 8 are in flight");
    let fencings: Vec<(TaskId, u64)> = first
        .iter()
        .map(|c| {
            let Command::Claim { task, .. } = c else { panic!("{c:?}") };
            (*task, fencing_of(&s.apply(c).outcome))
        })
        .collect();
    assert!(candidacy.step(&s, &observed, me, now + 2, &cfg).is_empty(), "committed but not started still count");
    for (task, fencing) in &fencings[..3] {
        s.apply(&Command::Started { task: *task, fencing: *fencing, now: now + 3 });
        assert_eq!(s.task(*task).unwrap().state, TaskState::Running);
    }
    assert_eq!(candidacy.step(&s, &observed, me, now + 4, &cfg).len(), 3, "room for as many as started");
}

#[test]
fn with_little_room_a_node_claims_the_tasks_it_ranks_best_at_first() {
    let mut s = mesh();
    s.apply(&capsule("tiny", "1m", 1));
    s.apply(&job("tiny", 30));
    let observed = healthy();
    let me = node_id(1);
    // (task index, rank) of each claim, in the order proposed.
    let ranks = |claims: &[Command]| -> Vec<(u32, u32)> {
        claims
            .iter()
            .map(|c| match c {
                Command::Claim { task, decision, .. } => (task.index, decision.winner_rank),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let rank_only = |claims: &[(u32, u32)]| -> Vec<u32> { claims.iter().map(|(_, r)| *r).collect() };
    // A node that saw every task long ago (and claimed none then), so every stagger has passed.
    let seen_long_ago = || {
        let mut candidacy = Candidacy::default();
        let look_only = ElectionConfig { max_claims_in_flight: 0, ..ElectionConfig::default() };
        assert!(candidacy.step(&s, &observed, me, 0, &look_only).is_empty());
        candidacy
    };
    // With room for all: every task, rank 0 or not, in task order.
    let all = ranks(&seen_long_ago().step(&s, &observed, me, 60_000, &ElectionConfig::default()));
    assert_eq!(all.len(), 30, "{all:?}");
    let best = all.iter().filter(|(_, r)| *r == 0).count();
    assert!((1..30).contains(&best), "node-1 ranks best at some tasks, not all: {all:?}");
    let mut in_task_order = all.clone();
    in_task_order.sort();
    assert!(!rank_only(&in_task_order).is_sorted(), "a task it ranks best at comes after one it does not");
    // With room for fewer: its rank-0 tasks come first, then the others by rank.
    let cfg = ElectionConfig { max_unstarted: best + 2, ..ElectionConfig::default() };
    let some = ranks(&seen_long_ago().step(&s, &observed, me, 60_000, &cfg));
    assert_eq!(some.len(), best + 2);
    assert!(rank_only(&some).is_sorted(), "{some:?}");
    assert_eq!(some.iter().filter(|(_, r)| *r == 0).count(), best, "{some:?}");
}

#[test]
fn a_node_that_answers_is_never_marked_offline() {
    // Membership reports node 2 OFFLINE (a healed partition's stale verdict) while it answers
    // the leader's RPCs: no mark. Once it stops answering, the mark follows.
    let s = mesh();
    let mut observed = healthy();
    observed.insert(node_id(2), Observed { health: Health::Offline, gossip: None, answering: true });
    assert!(leader_duties(&s, &observed, node_id(1), 4, 10).is_empty());
    observed.get_mut(&node_id(2)).unwrap().answering = false;
    assert_eq!(
        leader_duties(&s, &observed, node_id(1), 4, 11),
        vec![Command::SetNodeOffline { node: node_id(2), offline: true, term: 4, now: 11 }]
    );
    // A node recorded OFFLINE that answers again is marked back, even before membership agrees.
    let mut s = mesh();
    s.apply_in_term(4, &Command::SetNodeOffline { node: node_id(2), offline: true, term: 4, now: 12 });
    observed.insert(node_id(2), Observed { health: Health::Suspect, gossip: None, answering: true });
    assert_eq!(
        leader_duties(&s, &observed, node_id(1), 4, 13),
        vec![Command::SetNodeOffline { node: node_id(2), offline: false, term: 4, now: 13 }]
    );
}

/// The mesh with nodes `unable` re-admitted as unable to create namespaces.
fn without_namespaces(unable: &[u8]) -> falak_core::ledger::State {
    let mut s = mesh();
    for n in unable {
        let mut record = record(*n, falak_core::resources::Resources::new(2000, 4 << 30));
        record.namespaces = Some(falak_core::node::Namespaces::Unavailable);
        s.apply(&Command::AdmitNode { record, now: 1 });
    }
    s
}

#[test]
fn a_node_without_namespaces_does_not_claim_what_asks_for_a_network_of_its_own() {
    let mut s = without_namespaces(&[1, 2]);
    s.apply(&job("c", 4)); // as many as node 3 has room for
    let cfg = ElectionConfig::default();
    let observed = healthy();
    for n in 1..=2 {
        let claims = Candidacy::default().step(&s, &observed, node_id(n), 10_000, &cfg);
        assert!(claims.is_empty(), "node {n} claimed {claims:?}");
    }
    let claims = Candidacy::default().step(&s, &observed, node_id(3), 10_000, &cfg);
    assert_eq!(claims.len(), 4);
    let ranking = falak_core::election::rank_task(&s, &observed, node_id(1), TaskId { job: JobId(1), index: 0 });
    let (_, ranking) = ranking.unwrap();
    assert_eq!(ranking.fitting, 1);
    assert!(ranking.candidates[1..].iter().all(|c| c.no_fit == Some(falak_core::placement::NoFit::NoNetworkNamespace)));
}

#[test]
fn a_submission_is_checked_against_committed_records_and_observed_health() {
    let check = |s: &falak_core::ledger::State, observed: &BTreeMap<falak_core::NodeId, Observed>| {
        falak_core::election::check_submission(s, observed, node_id(1), "c", None)
    };
    let mut observed = healthy();
    assert_eq!(check(&without_namespaces(&[1, 2]), &observed), Ok(()));
    let s = without_namespaces(&[1, 2, 3]);
    let refused = check(&s, &observed).unwrap_err();
    assert_eq!((refused.capsule.as_str(), refused.version), ("c", 1));
    assert_eq!(refused.unable, ["node-1", "node-2", "node-3"]);
    // A capsule that does not exist is the ledger's to refuse.
    assert_eq!(falak_core::election::check_submission(&s, &observed, node_id(1), "nope", None), Ok(()));
    // The one node that could is OFFLINE as membership sees it: refused, and named.
    let s = without_namespaces(&[1, 2]);
    observed.get_mut(&node_id(3)).unwrap().health = Health::Offline;
    let refused = check(&s, &observed).unwrap_err();
    assert_eq!((refused.unable.len(), refused.offline.clone()), (2, vec!["node-3".to_owned()]));
}
