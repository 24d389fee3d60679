//! This node's own observations for the event mesh (a peer's health, function instances), kept
//! in memory: the last [`RECENT_OBSERVATIONS`] for new subscribers, and a broadcast for live
//! ones. Ledger events do not pass through here: every node holds them in the ledger's event
//! history, read by `event_feed`.

use std::collections::VecDeque;

use falak_api::event::{EventRecord, EventSource};
use falak_core::NodeId;
use tokio::sync::broadcast;

/// Observations kept for clients that ask for recent history.
pub const RECENT_OBSERVATIONS: usize = 1_000;

pub struct EventBus {
    node: NodeId,
    recent: VecDeque<EventRecord>,
    tx: broadcast::Sender<EventRecord>,
}

impl EventBus {
    pub fn new(node: NodeId) -> Self {
        let (tx, _) = broadcast::channel(4_096);
        EventBus { node, recent: VecDeque::new(), tx }
    }

    pub fn publish(&mut self, at_ms: u64, kind: &str, data: serde_json::Value) {
        let record = EventRecord {
            id: None,
            source: EventSource::Node,
            node: Some(self.node),
            at_ms,
            kind: kind.to_owned(),
            data,
        };
        if self.recent.len() == RECENT_OBSERVATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(record.clone());
        // No subscriber is fine.
        let _ = self.tx.send(record);
    }

    /// The recent observations and a receiver for every later one, taken together so none
    /// falls between them.
    pub fn subscribe(&self) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        (self.recent.iter().cloned().collect(), self.tx.subscribe())
    }
}
