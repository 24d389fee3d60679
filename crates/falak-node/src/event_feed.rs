//! One subscriber's event stream: the ledger's event history from where the subscriber asked,
//! then every new event as entries are applied, interleaved with this node's observations.
//!
//! Ledger events are read from the history on disk (`Ledger::history`), never from an in-memory
//! buffer, so a slow reader falls behind without losing any: committed entries only wake the
//! feed, which then reads on from the last id it sent. That is also why a reader can resume from
//! any id on any node. Node observations are live only, plus the recent ones for a subscriber
//! that did not ask for a position.

use falak_api::event::{EventItem, EventRecord, EventSource, EventStart, EventSubscription};
use falak_core::ledger::EventId;
use falak_ledger::{Committed, HistoryEvent, Ledger};
use tokio::sync::{broadcast, mpsc};

use crate::events::EventBus;
use crate::main_loop::event_kind;

/// Items buffered for a subscriber before the feed waits for it.
const BUFFER: usize = 256;
/// Ledger events read from disk at a time.
const PAGE: usize = 1_024;

/// Start a feed for one subscriber; it ends when the subscriber goes away (or, without
/// `follow`, once the history is read).
pub fn subscribe(ledger: &Ledger, bus: &EventBus, start: EventStart, follow: bool) -> EventSubscription {
    let (tx, items) = mpsc::channel(BUFFER);
    // Both subscriptions are taken before anything is read, so nothing falls between the
    // history and the live events.
    let committed = ledger.subscribe();
    let (recent, observations) = bus.subscribe();
    let feed = Feed { ledger: ledger.clone(), committed, observations, tx };
    tokio::spawn(feed.run(start, follow, recent));
    EventSubscription { items }
}

struct Feed {
    ledger: Ledger,
    committed: broadcast::Receiver<Committed>,
    observations: broadcast::Receiver<EventRecord>,
    tx: mpsc::Sender<EventItem>,
}

/// The feed stops: the subscriber left, or the history cannot be read.
struct Stop;

impl Feed {
    async fn run(mut self, start: EventStart, follow: bool, recent: Vec<EventRecord>) {
        let mut after = match start {
            EventStart::After(id) => Some(id),
            EventStart::Recent(count) => match self.ledger.history_tail(count).await {
                Ok(tail) => tail,
                Err(e) => {
                    tracing::warn!(error = %e, "event feed: cannot find the recent history");
                    return;
                }
            },
        };
        if self.catch_up(&mut after).await.is_err() {
            return;
        }
        if matches!(start, EventStart::Recent(_)) {
            for record in recent {
                if self.send(EventItem::Event(record)).await.is_err() {
                    return;
                }
            }
        }
        if !follow {
            return;
        }
        loop {
            let woke = tokio::select! {
                committed = self.committed.recv() => match committed {
                    Err(broadcast::error::RecvError::Closed) => return,
                    // Whatever was applied, or how much was missed, the history has it.
                    _ => true,
                },
                observed = self.observations.recv() => {
                    let item = match observed {
                        Ok(record) => EventItem::Event(record),
                        Err(broadcast::error::RecvError::Lagged(missed)) => EventItem::Lagged { missed },
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if self.send(item).await.is_err() {
                        return;
                    }
                    false
                }
                () = self.tx.closed() => return,
            };
            if woke {
                // One read covers every entry applied meanwhile.
                while self.committed.try_recv().is_ok() {}
                if self.catch_up(&mut after).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Send every ledger event after `after` that the history holds now.
    async fn catch_up(&mut self, after: &mut Option<EventId>) -> Result<(), Stop> {
        loop {
            let page = self.ledger.history(*after, PAGE).await.map_err(|e| {
                tracing::warn!(error = %e, "event feed: cannot read the event history");
                Stop
            })?;
            if let Some(resumes_at) = page.gap {
                self.send(EventItem::Gap { resumes_at }).await?;
                *after = Some(EventId::end_of(resumes_at.saturating_sub(1)));
            }
            if page.events.is_empty() {
                return Ok(());
            }
            for event in page.events {
                *after = Some(event.id);
                self.send(EventItem::Event(record(event))).await?;
            }
        }
    }

    async fn send(&self, item: EventItem) -> Result<(), Stop> {
        self.tx.send(item).await.map_err(|_| Stop)
    }
}

/// A ledger event as the API shows it.
pub fn record(event: HistoryEvent) -> EventRecord {
    EventRecord {
        id: Some(event.id),
        source: EventSource::Ledger,
        node: None,
        at_ms: event.at,
        kind: event_kind(&event.event).to_owned(),
        data: serde_json::to_value(&event.event).unwrap_or_default(),
    }
}
