//! Invariant: no OFFLINE (or back-online) mark proposed in an old term is ever applied.
//!
//! A leader cut off from the others keeps proposing what its own view shows, every peer
//! OFFLINE above all, and those writes are retried and reach the log after the heal, through
//! the new leader. Each mark names the term of the leader that proposed it; it may take effect
//! only in an entry of that same term.

use falak_core::ledger::{Applied, LedgerEvent};

#[derive(Debug, Default)]
pub struct TermFencing;

impl TermFencing {
    pub fn observe(&mut self, replica: usize, index: u64, term: u64, applied: &Applied, violations: &mut Vec<String>) {
        for event in &applied.events {
            let (node, proposed, what) = match event {
                LedgerEvent::NodeOffline { node, term } => (node, *term, "OFFLINE"),
                LedgerEvent::NodeOnline { node, term } => (node, *term, "back-online"),
                _ => continue,
            };
            if proposed != term {
                violations.push(format!(
                    "replica n{replica} applied an {what} mark for {} proposed in term {proposed} at log index {index} of term {term}",
                    node.short()
                ));
            }
        }
    }
}
