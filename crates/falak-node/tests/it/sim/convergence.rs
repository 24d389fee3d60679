//! Invariant: committed state never diverges across replicas.
//!
//! Every replica reports what applying each log index produced; the same index must produce the
//! same outcome and events everywhere. At the end, once every replica has applied the same
//! index, their whole states must be equal.

use std::collections::BTreeMap;

use falak_core::ledger::{Applied, State};

#[derive(Debug, Default)]
pub struct Convergence {
    by_index: BTreeMap<u64, (usize, Applied)>,
}

impl Convergence {
    pub fn observe(&mut self, replica: usize, index: u64, applied: &Applied, violations: &mut Vec<String>) {
        match self.by_index.get(&index) {
            Some((first, seen)) if seen != applied => violations.push(format!(
                "replicas {first} and {replica} diverge at log index {index}: {:?} vs {:?}",
                seen.outcome, applied.outcome
            )),
            Some(_) => {}
            None => {
                self.by_index.insert(index, (replica, applied.clone()));
            }
        }
    }

    /// Compare final states of replicas that applied the same index.
    pub fn compare_final(states: &[(usize, Option<u64>, State)], violations: &mut Vec<String>) {
        let Some((first, index, reference)) = states.first() else { return };
        for (replica, other_index, state) in &states[1..] {
            if other_index != index {
                violations.push(format!(
                    "replica {replica} applied {other_index:?} but replica {first} applied {index:?} after settling"
                ));
            } else if state != reference {
                violations.push(format!("replicas {first} and {replica} hold different states at index {index:?}"));
            }
            if !state.indexes_consistent() {
                violations.push(format!("replica {replica}'s derived indexes disagree with its data"));
            }
        }
    }
}
