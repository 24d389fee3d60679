//! Invariant: no task attempt ever has two valid claims.
//!
//! A claim is valid once committed; the state machine emits `ElectionWon` for each. Across all
//! replicas and the whole run, each (task, attempt) may have at most one fencing token.

use std::collections::BTreeMap;

use falak_core::job::TaskId;
use falak_core::ledger::LedgerEvent;

#[derive(Debug, Default)]
pub struct SingleClaim {
    won: BTreeMap<(TaskId, u32), u64>,
}

impl SingleClaim {
    pub fn observe(&mut self, event: &LedgerEvent, violations: &mut Vec<String>) {
        if let LedgerEvent::ElectionWon { task, attempt, fencing, .. } = event {
            match self.won.get(&(*task, *attempt)) {
                Some(existing) if existing != fencing => violations
                    .push(format!("two valid claims for {task} attempt {attempt}: fencing {existing} and {fencing}")),
                Some(_) => {}
                None => {
                    self.won.insert((*task, *attempt), *fencing);
                }
            }
        }
    }
}
