//! The event mesh as seen from one node: committed ledger events (every node applies the same
//! log, so every node publishes them) and this node's own membership observations.

use std::collections::VecDeque;

use falak_api::EventRecord;
use tokio::sync::broadcast;

/// Events kept for clients that ask for recent history.
pub const RECENT_EVENTS: usize = 10_000;

pub struct EventBus {
    seq: u64,
    recent: VecDeque<EventRecord>,
    tx: broadcast::Sender<EventRecord>,
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4_096);
        EventBus { seq: 0, recent: VecDeque::new(), tx }
    }

    pub fn publish(&mut self, at_ms: u64, kind: &str, data: serde_json::Value) {
        self.seq += 1;
        let record = EventRecord { seq: self.seq, at_ms, kind: kind.to_owned(), data };
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(record.clone());
        // No subscriber is fine.
        let _ = self.tx.send(record);
    }

    pub fn subscribe(&self) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        (self.recent.iter().cloned().collect(), self.tx.subscribe())
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}
