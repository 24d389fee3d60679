//! Automatic voters: which admitted nodes vote in the ledger.
//!
//! Pure planning run by the ledger leader. Every admitted node replicates the log as a learner
//! (ADR 0001); 3 of them vote (all of them when fewer), 5 once the mesh has 7 or more nodes. A
//! voter that has been OFFLINE longer than the grace period is replaced by a healthy learner
//! that has caught up with the log. Without such a learner it keeps its seat: taking the seat
//! away would not make a quorum any easier to reach (with 3 seats and one down, the other two
//! must answer either way), but it would leave the mesh a voter short once the node is back,
//! when one more failure would then stop every write. A learner OFFLINE for much longer is
//! dropped from the ledger membership (so the leader stops replicating to it); it is added
//! again when it comes back. A free seat goes to a healthy, caught-up learner at the next plan:
//! the leader plans every second and at once when a node comes back or is admitted.

use std::collections::{BTreeMap, BTreeSet};

use falak_core::election::Observed;
use falak_core::ledger::State;
use falak_core::placement::Health;
use falak_core::{Millis, NodeId};

/// How long an offline voter keeps its seat before it is replaced.
pub const VOTER_GRACE_MS: u64 = 10_000;
/// How long an offline learner stays in the ledger membership.
pub const LEARNER_GRACE_MS: u64 = 5 * 60_000;
/// A learner further behind the leader's log than this many entries is not promoted yet.
pub const MAX_PROMOTION_LAG: u64 = 256;

/// Membership changes the leader should make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VoterPlan {
    /// Admitted nodes to add as learners, with their transport address.
    pub add_learners: Vec<(NodeId, String)>,
    /// The new voter set, when it should change.
    pub voters: Option<BTreeSet<NodeId>>,
    /// Learners offline past [`LEARNER_GRACE_MS`], to drop from the ledger membership.
    pub remove_learners: BTreeSet<NodeId>,
}

/// The ledger's membership as the leader sees it.
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Members more than [`MAX_PROMOTION_LAG`] entries behind the leader's log.
    pub lagging: BTreeSet<NodeId>,
}

impl Members {
    /// From the leader's metrics: who is a member and who lags.
    pub fn from_metrics(metrics: &falak_ledger::LedgerMetrics) -> Members {
        let last = metrics.last_log_index.unwrap_or(0);
        let lagging = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(_, matched)| matched.unwrap_or(0) + MAX_PROMOTION_LAG < last)
            .map(|(id, _)| *id)
            .collect();
        Members { voters: metrics.voters.clone(), learners: metrics.learners.clone(), lagging }
    }
}

/// How many voters a mesh of `nodes` admitted nodes should have.
pub fn target_voters(nodes: usize) -> usize {
    if nodes >= 7 { 5 } else { nodes.min(3) }
}

pub fn plan(
    state: &State,
    observed: &BTreeMap<NodeId, Observed>,
    members: &Members,
    me: NodeId,
    now: Millis,
) -> VoterPlan {
    let (voters, learners) = (&members.voters, &members.learners);
    let healthy = |id: &NodeId| {
        *id == me
            || (state.node(id).is_some_and(|n| !n.offline)
                && observed.get(id).is_none_or(|o| o.health == Health::Healthy))
    };
    let add_learners = state
        .nodes()
        .filter(|n| !voters.contains(&n.record.id) && !learners.contains(&n.record.id) && healthy(&n.record.id))
        .map(|n| (n.record.id, n.record.transport_addr.clone()))
        .collect();
    let target = target_voters(state.nodes().count());
    // A voter keeps its seat while it is up or offline for less than the grace. One the ledger
    // does not list yet (a bootstrap voter whose own admission has not committed, as when the
    // first leader plans at once on taking office) keeps it too; only a revoked one never does.
    let within_grace = |id: &NodeId| match state.node(id) {
        Some(n) => !n.offline || n.offline_since.is_some_and(|since| now.saturating_sub(since) < VOTER_GRACE_MS),
        None => state.revoked_node(id).is_none(),
    };
    let mut keep: BTreeSet<NodeId> = voters.iter().copied().filter(|id| *id == me || within_grace(id)).collect();
    keep.insert(me);
    for candidate in
        learners.iter().filter(|id| healthy(id) && state.node(id).is_some() && !members.lagging.contains(id))
    {
        if keep.len() >= target {
            break;
        }
        keep.insert(*candidate);
    }
    // Seats nobody healthy could take stay with their offline voters (a revoked voter goes at
    // once).
    for voter in voters.iter().filter(|id| state.revoked_node(id).is_none()) {
        if keep.len() >= target {
            break;
        }
        keep.insert(*voter);
    }
    let remove_learners = learners
        .iter()
        .filter(|id| !keep.contains(id))
        .filter(|id| match state.node(id) {
            None => true,
            Some(n) => n.offline && n.offline_since.is_some_and(|since| now.saturating_sub(since) >= LEARNER_GRACE_MS),
        })
        .copied()
        .collect();
    let voters = (keep != *voters && !keep.is_empty()).then_some(keep);
    VoterPlan { add_learners, voters, remove_learners }
}

#[cfg(test)]
mod tests {
    use super::*;
    use falak_core::ledger::Command;
    use falak_core::node::NodeRecord;
    use falak_core::resources::Resources;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn members(voters: &BTreeSet<NodeId>, learners: &BTreeSet<NodeId>) -> Members {
        Members { voters: voters.clone(), learners: learners.clone(), lagging: BTreeSet::new() }
    }

    fn state(n: u8) -> State {
        let mut s = State::default();
        for i in 1..=n {
            let record = NodeRecord {
                id: id(i),
                name: format!("n{i}"),
                labels: Default::default(),
                capacity: Resources::new(1000, 1 << 30),
                cost_per_hour: 0.0,
                transport_addr: format!("127.0.0.1:{i}"),
                gossip_addr: String::new(),
                api_url: String::new(),
                namespaces: None,
            };
            s.apply(&Command::AdmitNode { record, now: 0 });
        }
        s
    }

    #[test]
    fn targets() {
        assert_eq!((target_voters(1), target_voters(3), target_voters(6), target_voters(7)), (1, 3, 3, 5));
    }

    #[test]
    fn new_nodes_become_learners_then_voters_up_to_three() {
        let s = state(4);
        let voters = BTreeSet::from([id(1)]);
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &BTreeSet::new()), id(1), 0);
        assert_eq!(p.add_learners.len(), 3);
        assert_eq!(p.voters, None, "no learner has joined yet");
        let learners = BTreeSet::from([id(2), id(3), id(4)]);
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &learners), id(1), 0);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(2), id(3)])));
        // A learner that has not caught up is passed over.
        let lagging = Members { lagging: BTreeSet::from([id(2)]), ..members(&voters, &learners) };
        let p = plan(&s, &BTreeMap::new(), &lagging, id(1), 0);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(3), id(4)])));
    }

    #[test]
    fn offline_voter_is_replaced_after_grace() {
        let mut s = state(4);
        s.apply(&Command::SetNodeOffline { node: id(3), offline: true, term: 0, now: 1_000 });
        let voters = BTreeSet::from([id(1), id(2), id(3)]);
        let learners = BTreeSet::from([id(4)]);
        assert_eq!(plan(&s, &BTreeMap::new(), &members(&voters, &learners), id(1), 5_000).voters, None);
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &learners), id(1), 1_000 + VOTER_GRACE_MS);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(2), id(4)])));
        assert!(p.remove_learners.is_empty());
    }

    #[test]
    fn an_offline_voter_keeps_its_seat_while_nobody_can_take_it() {
        // Three nodes, three voters, one partitioned for longer than the grace: shrinking to two
        // voters would not help the quorum and would leave one seat short after the heal.
        let mut s = state(3);
        s.apply(&Command::SetNodeOffline { node: id(3), offline: true, term: 0, now: 1_000 });
        let voters = BTreeSet::from([id(1), id(2), id(3)]);
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &BTreeSet::new()), id(1), 1_000 + 3 * VOTER_GRACE_MS);
        assert_eq!(p.voters, None, "{p:?}");
        // A lagging learner cannot take the seat either.
        let mut s4 = state(4);
        s4.apply(&Command::SetNodeOffline { node: id(3), offline: true, term: 0, now: 1_000 });
        let lagging = Members { lagging: BTreeSet::from([id(4)]), ..members(&voters, &BTreeSet::from([id(4)])) };
        assert_eq!(plan(&s4, &BTreeMap::new(), &lagging, id(1), 1_000 + VOTER_GRACE_MS).voters, None);
        // A revoked voter leaves at once, replacement or not.
        s.apply(&Command::RevokeNode { node: id(3), now: 2_000 });
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &BTreeSet::new()), id(1), 2_000);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(2)])));
    }

    #[test]
    fn a_bootstrap_voter_not_admitted_yet_keeps_its_seat() {
        // The first leader plans at once on taking office, before node 2 committed its own
        // admission: demoting it would leave two voters.
        let mut s = state(3);
        s.apply(&Command::RevokeNode { node: id(2), now: 1 });
        let mut fresh = State::default();
        for n in [1, 3] {
            fresh.apply(&Command::AdmitNode { record: s.node(&id(n)).unwrap().record.clone(), now: 0 });
        }
        let voters = BTreeSet::from([id(1), id(2), id(3)]);
        assert_eq!(plan(&fresh, &BTreeMap::new(), &members(&voters, &BTreeSet::new()), id(1), 0).voters, None);
        // Once revoked, it goes.
        let p = plan(&s, &BTreeMap::new(), &members(&voters, &BTreeSet::new()), id(1), 2);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(3)])));
    }

    #[test]
    fn a_node_back_from_offline_takes_a_free_seat_at_the_next_plan() {
        // Five nodes with two voters left (1 and 2): learner 3 is OFFLINE, 4 SUSPECT, and 5 is
        // back, HEALTHY and caught up, so 5 takes the free seat in the very next plan.
        let s = state(5);
        let voters = BTreeSet::from([id(1), id(2)]);
        let learners = BTreeSet::from([id(3), id(4), id(5)]);
        let mut observed = BTreeMap::new();
        observed.insert(id(3), Observed { health: Health::Offline, gossip: None, answering: false });
        observed.insert(id(4), Observed { health: Health::Suspect, gossip: None, answering: false });
        let p = plan(&s, &observed, &members(&voters, &learners), id(1), 0);
        assert_eq!(p.voters, Some(BTreeSet::from([id(1), id(2), id(5)])));
    }

    #[test]
    fn a_long_dead_learner_leaves_the_ledger_membership() {
        let mut s = state(4);
        s.apply(&Command::SetNodeOffline { node: id(4), offline: true, term: 0, now: 1_000 });
        let voters = BTreeSet::from([id(1), id(2), id(3)]);
        let learners = BTreeSet::from([id(4)]);
        let m = members(&voters, &learners);
        assert!(plan(&s, &BTreeMap::new(), &m, id(1), 1_000 + VOTER_GRACE_MS).remove_learners.is_empty());
        let p = plan(&s, &BTreeMap::new(), &m, id(1), 1_000 + LEARNER_GRACE_MS);
        assert_eq!(p.remove_learners, BTreeSet::from([id(4)]));
        assert_eq!(p.voters, None);
    }

    #[test]
    fn seven_nodes_get_five_voters() {
        let s = state(7);
        let voters = BTreeSet::from([id(1), id(2), id(3)]);
        let learners = (4..=7).map(id).collect();
        assert_eq!(plan(&s, &BTreeMap::new(), &members(&voters, &learners), id(1), 0).voters.map(|v| v.len()), Some(5));
    }
}
