//! Invariant: after any heal, every connected node is HEALTHY on every replica within a bound.
//!
//! A heal (links back, or a crashed node restarted) that no other fault follows for
//! [`HEAL_BOUND_MS`] must leave every running node not OFFLINE in every running replica's
//! state by then. A deposed leader's stale marks, or a leader that never clears its own mark,
//! would leave a connected node OFFLINE, placed on by nobody.

use std::collections::BTreeSet;

use falak_core::ledger::State;
use falak_core::{Millis, NodeId};

/// How long after a heal the marks must be gone: leader election, failure detection of the
/// healed links (immediate in the simulation) and one leader duty round, with room to spare.
pub const HEAL_BOUND_MS: Millis = 3_000;

/// Heals waiting to be judged.
#[derive(Debug, Default)]
pub struct HealChecks {
    /// (when the heal happened, what it was).
    pending: Vec<(Millis, String)>,
    checked: usize,
}

impl HealChecks {
    pub fn healed(&mut self, at: Millis, what: String) {
        self.pending.push((at, what));
    }

    /// Another fault at `at`: heals before it were disturbed and are not judged.
    pub fn fault(&mut self, _at: Millis) {
        self.pending.clear();
    }

    /// Judge the heals whose bound has passed. `replicas` are the running nodes' states,
    /// `running` the running nodes.
    pub fn check(
        &mut self,
        now: Millis,
        replicas: &[(usize, State)],
        running: &BTreeSet<NodeId>,
        violations: &mut Vec<String>,
    ) {
        let due: Vec<(Millis, String)> =
            self.pending.iter().filter(|(at, _)| now >= at + HEAL_BOUND_MS).cloned().collect();
        if due.is_empty() {
            return;
        }
        self.pending.retain(|(at, _)| now < at + HEAL_BOUND_MS);
        for (at, what) in due {
            self.checked += 1;
            for (replica, state) in replicas {
                let marked: Vec<String> = state
                    .nodes()
                    .filter(|n| n.offline && running.contains(&n.record.id))
                    .map(|n| n.record.name.clone())
                    .collect();
                if !marked.is_empty() {
                    violations.push(format!(
                        "{}ms after the heal at t={at} ({what}), replica n{replica} still records running nodes OFFLINE: {}",
                        now - at,
                        marked.join(", ")
                    ));
                }
            }
        }
    }

    /// How many heals were judged.
    pub fn checked(&self) -> usize {
        self.checked
    }
}
