//! What this node believes about its peers: health, address and gossip state per node.
//!
//! foca reports members joining and leaving but not suspicion, and a restart of a peer shows
//! up as a rename of its identity. Rather than translate each notification, the core
//! reconciles this table against foca's full member list after every input and emits an
//! event for every difference, so the events a consumer sees always agree with the view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use falak_core::NodeId;
use falak_core::gossip::GossipState;
use foca::{Member, State};

use crate::identity::MemberIdentity;

/// A peer's health as this node sees it (SWIM's alive / suspect / down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    Healthy,
    Suspect,
    Offline,
}

impl From<State> for Health {
    fn from(state: State) -> Self {
        match state {
            State::Alive => Health::Healthy,
            State::Suspect => Health::Suspect,
            State::Down => Health::Offline,
        }
    }
}

/// A change in what this node believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MembershipEvent {
    /// The peer joined, refuted a suspicion, or came back from OFFLINE.
    Healthy(NodeId),
    /// The peer missed a probe; it has `suspect_to_offline` to refute.
    Suspect(NodeId),
    /// The peer was declared down, left, or restarted (its previous run is gone; a
    /// `Healthy` for its new run follows). Work it held should be re-elected.
    Offline(NodeId),
    /// A newer gossip state of the peer arrived; read it from the view.
    Gossip(NodeId),
}

impl MembershipEvent {
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipEvent::Healthy(node)
            | MembershipEvent::Suspect(node)
            | MembershipEvent::Offline(node)
            | MembershipEvent::Gossip(node) => node,
        }
    }

    fn of_health(node: NodeId, health: Health) -> Self {
        match health {
            Health::Healthy => MembershipEvent::Healthy(node),
            Health::Suspect => MembershipEvent::Suspect(node),
            Health::Offline => MembershipEvent::Offline(node),
        }
    }
}

/// One peer in [`crate::Membership::view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// The peer's current generation (it grows on each restart or rejoin).
    pub generation: u64,
    pub health: Health,
    /// The latest gossip state received from the peer, if any.
    pub gossip: Option<GossipState>,
    /// When `health` last changed, on the caller's clock (the `now` passed to the core).
    pub last_change: Duration,
}

#[derive(Debug)]
struct PeerEntry {
    identity: MemberIdentity,
    health: Health,
    last_change: Duration,
    /// The reconcile pass that last found this peer in foca's member list.
    seen_in: u64,
}

/// Peers by node id, kept in step with foca's member list.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: BTreeMap<NodeId, PeerEntry>,
    pass: u64,
}

impl PeerTable {
    /// Brings the table in line with `members`, calling `emit` for every change and `forget`
    /// for every peer foca no longer knows.
    pub(crate) fn reconcile<'a>(
        &mut self,
        now: Duration,
        members: impl Iterator<Item = &'a Member<MemberIdentity>>,
        mut emit: impl FnMut(MembershipEvent),
        mut forget: impl FnMut(NodeId),
    ) {
        self.pass += 1;
        for member in members {
            let identity = member.id();
            let health = Health::from(member.state());
            let Some(entry) = self.peers.get_mut(&identity.node) else {
                // A peer first heard of as OFFLINE never was healthy here: nothing to report.
                if health != Health::Offline {
                    emit(MembershipEvent::of_health(identity.node, health));
                }
                let entry = PeerEntry { identity: identity.clone(), health, last_change: now, seen_in: self.pass };
                self.peers.insert(identity.node, entry);
                continue;
            };
            entry.seen_in = self.pass;
            if entry.identity.generation != identity.generation {
                // A new run of the peer replaced the old one: whatever the old run held is lost.
                if entry.health != Health::Offline {
                    entry.health = Health::Offline;
                    emit(MembershipEvent::Offline(identity.node));
                }
                entry.identity = identity.clone();
                entry.last_change = now;
            }
            if entry.health != health {
                entry.health = health;
                entry.last_change = now;
                emit(MembershipEvent::of_health(identity.node, health));
            }
        }
        let pass = self.pass;
        self.peers.retain(|node, entry| {
            if entry.seen_in == pass {
                return true;
            }
            if entry.health != Health::Offline {
                emit(MembershipEvent::Offline(*node));
            }
            forget(*node);
            false
        });
    }

    pub(crate) fn health(&self, node: &NodeId) -> Option<Health> {
        self.peers.get(node).map(|entry| entry.health)
    }

    pub(crate) fn views(&self, gossip: impl Fn(&NodeId) -> Option<GossipState>) -> Vec<NodeView> {
        self.peers
            .iter()
            .map(|(node, entry)| NodeView {
                id: *node,
                addr: entry.identity.addr,
                generation: entry.identity.generation,
                health: entry.health,
                gossip: gossip(node),
                last_change: entry.last_change,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: u8, generation: u64, state: State) -> Member<MemberIdentity> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(node)));
        Member::new(MemberIdentity::new(NodeId([node; 32]), addr, generation), 0, state)
    }

    fn reconcile(table: &mut PeerTable, members: &[Member<MemberIdentity>]) -> (Vec<MembershipEvent>, Vec<NodeId>) {
        let (mut events, mut forgotten) = (Vec::new(), Vec::new());
        table.reconcile(Duration::ZERO, members.iter(), |e| events.push(e), |n| forgotten.push(n));
        (events, forgotten)
    }

    #[test]
    fn health_changes_become_events() {
        let mut table = PeerTable::default();
        let n = NodeId([1; 32]);
        assert_eq!(reconcile(&mut table, &[member(1, 1, State::Alive)]).0, vec![MembershipEvent::Healthy(n)]);
        assert_eq!(reconcile(&mut table, &[member(1, 1, State::Alive)]).0, vec![]);
        assert_eq!(reconcile(&mut table, &[member(1, 1, State::Suspect)]).0, vec![MembershipEvent::Suspect(n)]);
        assert_eq!(reconcile(&mut table, &[member(1, 1, State::Down)]).0, vec![MembershipEvent::Offline(n)]);
        assert_eq!(reconcile(&mut table, &[member(1, 2, State::Alive)]).0, vec![MembershipEvent::Healthy(n)]);
    }

    #[test]
    fn restart_while_healthy_reports_the_old_run_offline_first() {
        let mut table = PeerTable::default();
        let n = NodeId([1; 32]);
        reconcile(&mut table, &[member(1, 1, State::Alive)]);
        let (events, _) = reconcile(&mut table, &[member(1, 2, State::Alive)]);
        assert_eq!(events, vec![MembershipEvent::Offline(n), MembershipEvent::Healthy(n)]);
    }

    #[test]
    fn forgotten_peers_leave_the_table() {
        let mut table = PeerTable::default();
        reconcile(&mut table, &[member(1, 1, State::Alive), member(2, 1, State::Down)]);
        let (events, forgotten) = reconcile(&mut table, &[]);
        assert_eq!(events, vec![MembershipEvent::Offline(NodeId([1; 32]))]);
        assert_eq!(forgotten, vec![NodeId([1; 32]), NodeId([2; 32])]);
        assert!(table.health(&NodeId([1; 32])).is_none());
    }
}
