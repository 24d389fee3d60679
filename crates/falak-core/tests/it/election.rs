//! Candidacy: the best-ranked node claims at once, lower ranks after their stagger.

use std::collections::BTreeMap;

use falak_core::election::{Candidacy, ElectionConfig, Observed, leader_duties};
use falak_core::job::{JobId, TaskId, TaskState};
use falak_core::ledger::{Command, Outcome};
use falak_core::placement::Health;

use crate::fixtures::*;

fn healthy() -> BTreeMap<falak_core::NodeId, Observed> {
    (1..=3).map(|n| (node_id(n), Observed { health: Health::Healthy, gossip: None })).collect()
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
    observed.insert(node_id(2), Observed { health: Health::Offline, gossip: None });
    let duties = leader_duties(&s, &observed, 10_000);
    assert!(duties.contains(&Command::SetNodeOffline { node: node_id(2), offline: true, now: 10_000 }));
    assert!(duties.contains(&Command::ExpireLeases { now: 10_000 }));
    for d in &duties {
        s.apply(d);
    }
    assert_eq!(s.task(TaskId { job: JobId(1), index: 0 }).unwrap().state, TaskState::Retrying);
    assert!(leader_duties(&s, &observed, 10_001).is_empty());
}
