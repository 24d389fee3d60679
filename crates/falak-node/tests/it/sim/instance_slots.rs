//! Invariant: a function never holds more instance slots than its `max_instances`, on any
//! replica at any point of its log; and once the ledger has committed a node OFFLINE, that node
//! holds no slot.
//!
//! Nodes claim and release slots of function `f` (max [`MAX_INSTANCES`]) at seeded moments
//! while nodes crash and links are cut; each replica's slot set is rebuilt from the events of
//! the entries it applies.

use std::collections::{BTreeMap, BTreeSet};

use falak_core::NodeId;
use falak_core::ledger::{Applied, LedgerEvent, State};

/// The simulated function's `max_instances`.
pub const MAX_INSTANCES: u32 = 2;

#[derive(Debug, Default)]
pub struct InstanceSlots {
    /// Per replica: the slots its applied entries hold; `None` after a snapshot install (the
    /// replica's state jumped, so its set is unknown until the end-of-run check).
    replicas: BTreeMap<usize, Option<BTreeSet<(NodeId, u64)>>>,
    /// Most slots ever seen held at once on one replica.
    pub most: usize,
}

impl InstanceSlots {
    pub fn observe(&mut self, replica: usize, applied: &Applied, violations: &mut Vec<String>) {
        let slots = self.replicas.entry(replica).or_insert_with(|| Some(BTreeSet::new()));
        let Some(slots) = slots else { return };
        for event in &applied.events {
            match event {
                LedgerEvent::InstanceClaimed { node, instance, .. } => {
                    slots.insert((*node, *instance));
                }
                LedgerEvent::InstanceReleased { node, instance, .. } => {
                    slots.remove(&(*node, *instance));
                }
                _ => {}
            }
        }
        self.most = self.most.max(slots.len());
        if slots.len() > MAX_INSTANCES as usize {
            violations.push(format!(
                "replica n{replica} holds {} instance slots of f, more than max_instances {MAX_INSTANCES}",
                slots.len()
            ));
        }
    }

    pub fn snapshot_installed(&mut self, replica: usize) {
        self.replicas.insert(replica, None);
    }
}

/// The end-of-run check on one replica's committed state.
pub fn check(state: &State, violations: &mut Vec<String>) {
    let Some(f) = state.function("f") else {
        violations.push("function f is missing from committed state".into());
        return;
    };
    if f.instances.len() > MAX_INSTANCES as usize {
        violations.push(format!("f holds {} slots at the end, max {MAX_INSTANCES}", f.instances.len()));
    }
    for slot in &f.instances {
        if state.node(&slot.node).is_some_and(|n| n.offline) {
            violations.push(format!("OFFLINE node {} still holds slot {}", slot.node.short(), slot.instance));
        }
    }
}
